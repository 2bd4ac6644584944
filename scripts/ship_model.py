"""Copies a `docqa train` output into `qa_core/models/<name>/` as the shipped model.

fp16 safetensors (the fp32 weights are over 50 MB), tokenizer files, model card and training record,
certified again for docqa's encoder (`docqa_native.json`: the fp16 weights void the run's certificate).

    python scripts/ship_model.py runs/train-minilm qa_core/models/docqa-minilm-l6-squad
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from qa_core.runtime.certify import certify_checkpoint


def ship(run_dir: Path, dest: Path) -> None:
    """Writes the shipped model folder."""
    dest.mkdir(parents=True, exist_ok=True)
    model = AutoModelForQuestionAnswering.from_pretrained(run_dir, dtype=torch.float32)
    model.half().save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(run_dir).save_pretrained(dest)
    for name in ("README.md", "train_info.json"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, dest / name)
    refusal = certify_checkpoint(dest, dtype="fp32")  # fp16 on disk, compared in fp32 as it answers
    if refusal is not None:
        raise SystemExit(f"{dest} is not certified for docqa's encoder: {refusal}")


if __name__ == "__main__":
    ship(Path(sys.argv[1]), Path(sys.argv[2]))
