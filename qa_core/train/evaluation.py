"""What `docqa train` records about a finished run: EM/F1 with docqa's own inference, the hardware."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch

from qa_core.config import QAConfig
from qa_core.evaluation.squad import load_squad
from qa_core.train.config import TrainConfig

logger = logging.getLogger(__name__)


def evaluate_model(
    model_dir: str, squad_path: str, config: QAConfig, limit: int | None = None
) -> dict[str, Any]:
    """EM/F1 of a model directory on a SQuAD file, with docqa's own inference engine and evaluator.

    Args:
        model_dir: The trained model.
        squad_path: SQuAD file with gold answers.
        config: The inference config (its `model.name_or_path` is replaced by `model_dir`).
        limit: Evaluate on the first N questions only.
    """
    from qa_core.engine.loop import QAEngine
    from qa_core.evaluation.evaluate import evaluate
    from qa_core.evaluation.squad import SquadDataset, squad_to_table
    from qa_core.records import Answer
    from qa_core.runtime.loaders import load_runner

    dataset = load_squad(squad_path)
    if limit is not None:
        dataset = SquadDataset(dataset.version, dataset.examples[:limit])
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, name_or_path=model_dir))
    engine = QAEngine(load_runner(config.model, config.runtime), config)
    started = time.perf_counter()
    predictions = {
        str(r.id): r.answer
        for r in engine.answer_rows(squad_to_table(dataset).to_pylist())
        if isinstance(r, Answer)
    }
    scores = evaluate(dataset, predictions).to_dict()
    seconds = round(time.perf_counter() - started, 1)
    scores.update(data=squad_path, questions=len(dataset.examples), seconds=seconds)
    logger.info(
        "eval on %s (%d questions): EM %.2f F1 %.2f",
        squad_path,
        len(dataset.examples),
        scores["exact"],
        scores["f1"],
    )
    return scores


def hardware_summary(device: torch.device, config: TrainConfig) -> str:
    """A one-line description of where training ran."""
    import os
    import platform

    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, bf16 autocast {'on' if config.bf16 else 'off'}, "
        f"torch {torch.__version__}"
    )
