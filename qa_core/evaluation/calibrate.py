"""`docqa calibrate`: fit the score temperature of a model on labelled SQuAD data, stored with the model.

The sample is the `n` questions with the smallest hash of their id (a deterministic spread over the whole
file, not its first articles); the last bit of the same hash puts each one in the fit half or the
held-out half, so the held-out figures never use a question the temperature was fitted on. Questions of
one paragraph can land in both halves (they share a context, not a question).

Candidate logits: the fit needs every candidate logit of a row, not only the top-1 score. The job's
engine answers the sample with `candidates="all"`: windows are decoded with the job's `n_best`, and the
row's `top_k` then lists exactly the candidate set its `score` is a softmax over (every window's `n_best`
spans de-duplicated by character span, plus the null answer), each with its raw `logit_score`. Setting
`decode.top_k = decode.n_best` instead would truncate the set to `n_best` entries for rows with several
windows and bias the refitted score upwards.

Label: the returned answer is right when it exactly matches a gold answer after the official SQuAD
normalisation (under v2.0, an empty gold list means the right answer is "").
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qa_core.config import QAConfig
from qa_core.engine.loop import QAEngine
from qa_core.errors import ConfigError
from qa_core.evaluation.calibration import CALIBRATION_FILE, write_calibration
from qa_core.evaluation.reliability import LOG_T_RANGE, CandidateLogits, fit_temperature, is_correct
from qa_core.evaluation.squad import SquadExample, load_squad
from qa_core.records import Answer
from qa_core.runtime.loaders import load_runner
from qa_core.runtime.runner import ModelRunner

logger = logging.getLogger(__name__)


def question_hash(question_id: str) -> bytes:
    """sha256 of a question id: orders the sample and picks its half."""
    return hashlib.sha256(question_id.encode("utf-8")).digest()


def is_heldout(question_id: str) -> bool:
    """True when the question belongs to the held-out half (never used for fitting)."""
    return bool(question_hash(question_id)[-1] & 1)


def split_sample(examples: Sequence[SquadExample], n: int) -> tuple[list[SquadExample], list[SquadExample]]:
    """The `n` questions with the smallest id hash, split into (fit, held-out) by the hash's last bit."""
    sample = sorted(examples, key=lambda ex: question_hash(ex.id))[:n]
    fit = [ex for ex in sample if not is_heldout(ex.id)]
    heldout = [ex for ex in sample if is_heldout(ex.id)]
    return fit, heldout


def candidate_answers(
    runner: ModelRunner, config: QAConfig, rows: Sequence[dict[str, Any]]
) -> list[Answer | None]:
    """Each row's answer with its full candidate list (in `top_k`), at temperature 1.

    The job's own engine answers the rows (`QAEngine` with `candidates="all"`), so the fit sees exactly
    the candidates, logits and rejections the job produces.

    Args:
        runner: The loaded model.
        config: Job config (featurize, batch, `decode.n_best`, `max_answer_len`, no-answer handling).
        rows: Input rows with the configured id / question / context columns.

    Returns:
        One entry per row: an `Answer` whose `top_k` holds every candidate ranked as the engine ranks
        them (the returned answer first), or None for a row the engine rejects.
    """
    engine = QAEngine(runner, config, candidates="all")
    return [result if isinstance(result, Answer) else None for result in engine.answer_rows(rows)]


def labelled_logits(
    runner: ModelRunner, config: QAConfig, examples: Sequence[SquadExample], squad_v2: bool
) -> CandidateLogits:
    """Candidate logits, returned-answer index (0: `top_k` lists it first) and exact-match label per row.

    Questions the engine rejects (empty question, over-long context, ...) get no score and are left out.
    """
    cols = config.input
    rows = [
        {cols.id_column: ex.id, cols.question_column: ex.question, cols.context_column: ex.context}
        for ex in examples
    ]
    logits: list[list[float]] = []
    correct: list[bool] = []
    for example, answer in zip(examples, candidate_answers(runner, config, rows), strict=True):
        if answer is None:
            continue
        logits.append([s.logit_score for s in answer.top_k])
        correct.append(is_correct(answer.answer, example, squad_v2))
    skipped = len(examples) - len(logits)
    if skipped:
        logger.warning("%d of %d questions were rejected by the engine and left out", skipped, len(examples))
    return CandidateLogits.from_rows(logits, [0] * len(logits), correct)


@dataclass(frozen=True)
class CalibrationResult:
    """What `docqa calibrate` fitted and measured.

    Attributes:
        temperature: The fitted softmax temperature.
        method: Always "temperature".
        data: File name of the labelled data.
        n_fit: Answered questions used for the fit.
        n_heldout: Answered held-out questions the figures below are measured on.
        accuracy_heldout: Exact-match rate of the returned answers on the held-out half.
        ece_before: Held-out ECE (10 equal-width bins) of the uncalibrated score (T = 1).
        ece_after: Held-out ECE at the fitted temperature.
        log_loss_before: Held-out binary log-loss at T = 1.
        log_loss_after: Held-out binary log-loss at the fitted temperature.
        created: UTC time of the fit, ISO 8601.
    """

    temperature: float
    method: str
    data: str
    n_fit: int
    n_heldout: int
    accuracy_heldout: float
    ece_before: float
    ece_after: float
    log_loss_before: float
    log_loss_after: float
    created: str

    def to_document(self) -> dict[str, Any]:
        """The `calibration.json` document."""
        return {
            "temperature": self.temperature,
            "method": self.method,
            "fitted_on": {"data": self.data, "n_fit": self.n_fit},
            "heldout": {
                "n": self.n_heldout,
                "accuracy": self.accuracy_heldout,
                "log_loss_before": self.log_loss_before,
                "log_loss_after": self.log_loss_after,
            },
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "created": self.created,
        }

    def format_table(self) -> str:
        """A small plain-text summary."""
        return "\n".join(
            [
                f"temperature {self.temperature:.4f} fitted on {self.n_fit} questions of {self.data}",
                f"held-out ({self.n_heldout} questions, exact match {100 * self.accuracy_heldout:.1f}%):",
                f"{'':<10}{'ECE':>8}{'log-loss':>10}",
                f"{'before':<10}{self.ece_before:>8.4f}{self.log_loss_before:>10.4f}",
                f"{'after':<10}{self.ece_after:>8.4f}{self.log_loss_after:>10.4f}",
            ]
        )


def calibrate(
    config: QAConfig, data_path: str, n: int = 2000, *, model: ModelRunner | None = None
) -> CalibrationResult:
    """Fits the temperature of `config.model` on `n` questions of a SQuAD file.

    Args:
        config: Job config; `decode.temperature` and `decode.calibration` are ignored (the fit starts
            from the raw logits).
        data_path: SQuAD v1.1 / v2.0 file with gold answers.
        n: Questions sampled (split about evenly into fit and held-out halves).
        model: An already loaded model (tests); loaded from `config.model` when None.

    Raises:
        ConfigError: When `n` is too small or the sample leaves a half empty.
    """
    if n < 2:
        raise ConfigError(f"--n must be at least 2, got {n}")
    dataset = load_squad(data_path)
    fit_examples, heldout_examples = split_sample(dataset.examples, n)
    if not fit_examples or not heldout_examples:
        raise ConfigError(
            f"{data_path}: the sample of {min(n, len(dataset.examples))} questions leaves "
            f"{len(fit_examples)} to fit and {len(heldout_examples)} held out; use more questions"
        )
    qa_model = model if model is not None else load_runner(config.model, config.runtime)
    squad_v2 = dataset.version.startswith("2")
    fit_data = labelled_logits(qa_model, config, fit_examples, squad_v2)
    heldout = labelled_logits(qa_model, config, heldout_examples, squad_v2)
    if len(fit_data) == 0 or len(heldout) == 0:
        raise ConfigError(f"{data_path}: no answered question in the fit or held-out half")
    temperature = fit_temperature(fit_data)
    if min(abs(math.log(temperature) - bound) for bound in LOG_T_RANGE) < 1e-3:
        logger.warning(
            "the fitted temperature %.4g is at the edge of the search range; the scores carry little "
            "information about correctness on this data (check the model and the labels)",
            temperature,
        )
    result = CalibrationResult(
        temperature=temperature,
        method="temperature",
        data=Path(data_path).name,
        n_fit=len(fit_data),
        n_heldout=len(heldout),
        accuracy_heldout=float(heldout.correct.mean()),
        ece_before=heldout.ece(1.0),
        ece_after=heldout.ece(temperature),
        log_loss_before=heldout.log_loss(1.0),
        log_loss_after=heldout.log_loss(temperature),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    logger.info(
        "fitted temperature %.4f (held-out ECE %.4f -> %.4f)",
        temperature,
        result.ece_before,
        result.ece_after,
    )
    return result


def check_model_dir(model_dir: str) -> None:
    """Fails fast when `calibration.json` cannot be stored beside the model.

    Raises:
        ConfigError: When `model_dir` is not a local directory (a hub id or a remote URL).
    """
    if not Path(model_dir).is_dir():
        raise ConfigError(
            f"model {model_dir} is not a local directory; {CALIBRATION_FILE} is stored beside the weights, "
            "so download the checkpoint and pass --model DIR (or use --dry-run to fit without writing)"
        )


def save_calibration(model_dir: str, result: CalibrationResult) -> Path:
    """Writes `calibration.json` into a local model directory (see `check_model_dir`)."""
    check_model_dir(model_dir)
    return write_calibration(model_dir, result.to_document())
