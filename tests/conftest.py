"""Shared fixtures: a tiny random BERT QA model built locally from a config (no downloads)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tuned batch shapes of the developer's machine (`docqa tune`) must not change what the tests run; tests
# that tune point DOCQA_CACHE_DIR at their own folder.
os.environ["DOCQA_CACHE_DIR"] = tempfile.mkdtemp(prefix="docqa-test-cache-")

DATA = Path(__file__).parent / "data"
SHARED_SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"


def build_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Saves a 2-layer random BERT QA model and a fast tokenizer over `tests/data/vocab.txt`.

    Certified for docqa's encoder as `docqa train` certifies what it saves, so it loads natively.
    """
    import torch
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    torch.manual_seed(seed)
    tokenizer = BertTokenizerFast(vocab=str(DATA / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    model = BertForQuestionAnswering(config)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    from qa_core.runtime.certify import certify_checkpoint

    refusal = certify_checkpoint(directory)
    if refusal is not None:
        raise RuntimeError(f"the tiny model is not certified: {refusal}")
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_qa_model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from qa_core.config import ModelConfig, RuntimeConfig
    from qa_core.runtime.loaders import load_runner

    return load_runner(ModelConfig(name_or_path=str(tiny_model_dir)), RuntimeConfig(device="cpu"))


@pytest.fixture(scope="session")
def tiny_transformers_tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny model's tokenizer as transformers loads it: the reference for featurization's windows.

    (`tiny_model` loads it without transformers, `qa_core.runtime.loaders.native`.)
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def write_parquet(path: Path, rows: list[dict[str, object]], schema: pa.Schema | None = None) -> Path:
    """Writes dict rows as a Parquet file."""
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path)
    return path
