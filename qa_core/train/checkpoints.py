"""The checkpoints of a `docqa train` run: listing them and resuming from the latest."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from qa_core.errors import ConfigError
from qa_core.runtime.certify import certify_checkpoint
from qa_core.train.config import RESUME_FREE_FIELDS

logger = logging.getLogger(__name__)


def list_checkpoints(output: Path) -> list[Path]:
    """The `checkpoints/step-N` folders of a run, oldest first."""
    found = [p for p in (output / "checkpoints").glob("step-*") if p.name[5:].isdigit() and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def resume_point(output: Path, state: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The latest checkpoint and its saved state, checked against the new run's state.

    Raises:
        ConfigError: No checkpoint, or settings other than `RESUME_FREE_FIELDS` that differ.
    """
    found = list_checkpoints(output)
    if not found:
        raise ConfigError(f"--resume: no checkpoint in {output / 'checkpoints'} to resume from")
    saved: dict[str, Any] = json.loads((found[-1] / "trainer_state.json").read_text(encoding="utf-8"))
    differ = sorted(
        k
        for k in state["config"]
        if k not in RESUME_FREE_FIELDS and saved["config"].get(k) != state["config"][k]
    )
    if differ or saved["windows"] != state["windows"]:
        raise ConfigError(f"train: cannot resume {found[-1]}: settings differ: {differ or ['windows']}")
    saved["config"] = state["config"]
    logger.info("resuming from %s (step %d/%d)", found[-1], saved["step"], saved["total_steps"])
    return found[-1], saved


def save_final_model(model: Any, tokenizer: Any, output: Path, base_dir: str) -> None:
    """Writes the trained model, its tokenizer and the base encoder's licence (if any) into `output`.

    Then certifies it for docqa's own encoder (`qa_core.runtime.certify`): at export, once, docqa's
    encoder and tokenizer are compared with transformers' on this checkpoint, and a checkpoint that
    matches loads without transformers. One that does not (another architecture) loads through
    transformers; that is logged, not an error.
    """
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    if (Path(base_dir) / "LICENSE").is_file():
        shutil.copy(Path(base_dir) / "LICENSE", output / "LICENSE")
    refusal = certify_checkpoint(output, dtype="fp32")  # the weights as saved, in the default dtype
    if refusal is not None:
        logger.info(
            "%s will load through transformers (not certified for docqa's encoder: %s)", output, refusal
        )
