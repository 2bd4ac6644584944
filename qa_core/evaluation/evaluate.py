"""SQuAD v1.1 / v2.0 evaluation: exact match and token F1, following the official scripts' rules.

v1.1: every question counts; a question without a prediction scores 0. v2.0: gold answers with an
empty normalised text are dropped (no gold left means the gold is the empty answer), an empty token list
matches only another empty one, and a question without a prediction is skipped (the official v2.0 script
averages over the predicted questions). Both versions count the missing predictions in `missing`.
"""

from __future__ import annotations

import collections
import gzip
import json
import logging
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.parquet as pq

from qa_core.errors import InputError
from qa_core.evaluation.squad import SquadDataset

logger = logging.getLogger(__name__)

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Normalise an answer the SQuAD way: lower-case, no punctuation, no articles, single spaces.

    Args:
        text: An answer text.

    Returns:
        The normalised text.

    """
    lowered = text.lower()
    no_punct = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    no_articles = _ARTICLES.sub(" ", no_punct)
    return " ".join(no_articles.split())


def exact_match(prediction: str, ground_truth: str) -> bool:
    """Tell whether two answers are equal after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str, *, squad_v2: bool = False) -> float:
    """Compute the token-level F1 between two answers after `normalize_answer`.

    Args:
        prediction: The predicted answer.
        ground_truth: A gold answer.
        squad_v2: Use the v2.0 rule: when either side has no tokens, the score is 1.0 if both are empty
            and 0.0 otherwise. Under v1.1 two empty answers score 0.0.

    Returns:
        F1 in [0, 1].

    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    if squad_v2 and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class EvalScores:
    """Scores over a set of questions.

    Attributes:
        exact: Exact match, percent.
        f1: Token F1, percent.
        total: Number of questions averaged over.

    """

    exact: float
    f1: float
    total: int


@dataclass(frozen=True)
class EvalResult:
    """The result of `evaluate`.

    Attributes:
        version: "1.1" or "2.0" (the dataset's).
        exact: Exact match, percent.
        f1: Token F1, percent.
        total: Questions averaged over: all of them in v1.1, the predicted ones in v2.0.
        missing: Questions of the dataset without a prediction.
        has_ans: v2.0 only: the scores over answerable questions (None for v1.1).
        no_ans: v2.0 only: the scores over unanswerable questions (None for v1.1).

    """

    version: str
    exact: float
    f1: float
    total: int
    missing: int
    has_ans: EvalScores | None = None
    no_ans: EvalScores | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; v2.0 breakdowns use the official `HasAns_*` / `NoAns_*` keys."""
        out: dict[str, Any] = {
            "version": self.version,
            "exact": self.exact,
            "f1": self.f1,
            "total": self.total,
            "missing": self.missing,
        }
        for prefix, scores in (("HasAns", self.has_ans), ("NoAns", self.no_ans)):
            if scores is not None:
                out[f"{prefix}_exact"] = scores.exact
                out[f"{prefix}_f1"] = scores.f1
                out[f"{prefix}_total"] = scores.total
        return out

    def format_table(self) -> str:
        """Render the scores as a small plain-text table."""
        rows = [("all", self.exact, self.f1, self.total)]
        for name, scores in (("HasAns", self.has_ans), ("NoAns", self.no_ans)):
            if scores is not None:
                rows.append((name, scores.exact, scores.f1, scores.total))
        lines = [
            f"SQuAD v{self.version} evaluation (missing predictions: {self.missing})",
            f"{'subset':<8} {'exact':>8} {'f1':>8} {'total':>7}",
        ]
        lines += [f"{name:<8} {exact:>8.3f} {f1:>8.3f} {total:>7d}" for name, exact, f1, total in rows]
        return "\n".join(lines)


def _mean_percent(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0


def _scores(exact: list[float], f1: list[float]) -> EvalScores:
    return EvalScores(exact=_mean_percent(exact), f1=_mean_percent(f1), total=len(exact))


def evaluate(dataset: SquadDataset, predictions: Mapping[str, str]) -> EvalResult:
    """Score predictions against a SQuAD dataset with the official rules of the dataset's version.

    Predictions for ids not in the dataset are ignored.

    Args:
        dataset: The gold dataset.
        predictions: Question id to predicted answer text ("" predicts no answer).

    Returns:
        The scores; in v2.0 with breakdowns over answerable (`has_ans`) and unanswerable (`no_ans`)
        questions, where a question is answerable when it has at least one gold answer.

    """
    v2 = dataset.version.startswith("2")
    exact: dict[bool, list[float]] = {True: [], False: []}
    f1: dict[bool, list[float]] = {True: [], False: []}
    missing = 0
    for example in dataset.examples:
        has_answer = bool(example.answers)
        if example.id not in predictions:
            missing += 1
            logger.debug("No prediction for question %s", example.id)
            if not v2:
                exact[has_answer].append(0.0)
                f1[has_answer].append(0.0)
            continue
        prediction = predictions[example.id]
        golds = [a.text for a in example.answers]
        if v2:
            golds = [g for g in golds if normalize_answer(g)] or [""]
        exact[has_answer].append(max((float(exact_match(prediction, g)) for g in golds), default=0.0))
        f1[has_answer].append(max((f1_score(prediction, g, squad_v2=v2) for g in golds), default=0.0))
    if missing:
        action = "skipped" if v2 else "scored 0"
        logger.warning("%d of %d questions have no prediction (%s)", missing, len(dataset.examples), action)
    overall = _scores(exact[True] + exact[False], f1[True] + f1[False])
    if not v2:
        return EvalResult("1.1", overall.exact, overall.f1, overall.total, missing)
    return EvalResult(
        version="2.0",
        exact=overall.exact,
        f1=overall.f1,
        total=overall.total,
        missing=missing,
        has_ans=_scores(exact[True], f1[True]),
        no_ans=_scores(exact[False], f1[False]),
    )


def _load_json_predictions(path: str) -> dict[str, str]:
    try:
        with fsspec.open(path, "rb") as handle:
            raw: bytes = handle.read()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the predictions file: {exc.strerror or exc}") from exc
    try:
        payload = gzip.decompress(raw) if raw.startswith(b"\x1f\x8b") else raw
        doc = json.loads(payload)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON predictions file: {exc}") from exc
    if not isinstance(doc, dict):
        raise InputError(f"{path}: predictions must be a JSON object of id -> answer text")
    bad = [key for key, value in doc.items() if not isinstance(value, str)]
    if bad:
        raise InputError(f"{path}: {len(bad)} predictions are not strings, e.g. id {bad[0]!r}")
    return dict(doc)


def _load_parquet_predictions(path: str, files: list[str], fs: Any) -> dict[str, str]:
    predictions: dict[str, str] = {}
    null_ids = 0
    for file in files:
        with fs.open(file, "rb") as handle:
            try:
                table = pq.read_table(handle, columns=["id", "answer"])
            except Exception as exc:  # pyarrow raises several types for bad files and missing columns
                raise InputError(f"{path}: cannot read columns id, answer from {file}: {exc}") from exc
        for qid, answer in zip(
            table.column("id").to_pylist(), table.column("answer").to_pylist(), strict=True
        ):
            if qid is None:
                null_ids += 1
                continue
            key, text = str(qid), "" if answer is None else str(answer)
            if predictions.get(key, text) != text:
                raise InputError(
                    f"{path}: id {key!r} has conflicting answers {predictions[key]!r} and {text!r}"
                )
            predictions[key] = text
    if null_ids:
        logger.warning("%s: ignored %d answer rows with a null id", path, null_ids)
    return predictions


def load_predictions(path: str) -> dict[str, str]:
    """Load predictions from a JSON file or a docqa output directory.

    Args:
        path: Local path or fsspec URL of either a `.json` / `.json.gz` file holding an object of question
            id -> answer text, or a docqa output directory with `answers/*.parquet` files (columns `id`
            and `answer`; a null answer means "", ids are converted to strings).

    Returns:
        Question id to answer text.

    Raises:
        InputError: If the path does not exist, is neither form, or its content is malformed.

    """
    fs, fs_path = fsspec.core.url_to_fs(path)
    if fs.isdir(fs_path):
        files = sorted(fs.glob(f"{fs_path.rstrip('/')}/answers/*.parquet"))
        if not files:
            raise InputError(f"{path}: a directory of predictions must contain answers/*.parquet files")
        return _load_parquet_predictions(path, files, fs)
    if fs_path.lower().endswith((".json", ".json.gz")):
        if not fs.exists(fs_path):
            raise InputError(f"{path}: predictions file does not exist")
        return _load_json_predictions(path)
    raise InputError(
        f"{path}: predictions must be a .json / .json.gz file "
        "or a docqa output directory with answers/*.parquet"
    )
