"""qa_core.evaluation.evaluate: SQuAD normalisation, EM/F1 rules, prediction loading, golden scores."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qa_core.errors import InputError
from qa_core.evaluation.evaluate import (
    EvalResult,
    EvalScores,
    evaluate,
    exact_match,
    f1_score,
    load_predictions,
    normalize_answer,
)
from qa_core.evaluation.squad import SquadAnswer, SquadDataset, SquadExample, load_squad

SQUAD_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"


def _ex(qid: str, *answers: str, impossible: bool = False) -> SquadExample:
    return SquadExample(
        id=qid,
        title="t",
        context="c",
        question="q?",
        answers=tuple(SquadAnswer(a, 0) for a in answers),
        is_impossible=impossible,
    )


@pytest.fixture(scope="module")
def squad_dir() -> Path:
    if not SQUAD_DIR.is_dir():
        pytest.skip(f"shared SQuAD data not found at {SQUAD_DIR}")
    return SQUAD_DIR


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Denver Broncos!", "denver broncos"),
        ("  an   apple,  a pear ", "apple pear"),
        ("Theater", "theater"),
        ("A-B", "ab"),
        ("the", ""),
        ("", ""),
        ("\tNew\nYork.", "new york"),
        ("L'Anse aux Meadows", "lanse aux meadows"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match() -> None:
    assert exact_match("the Broncos.", "Broncos")
    assert not exact_match("Denver Broncos", "Broncos")


def test_f1_basic() -> None:
    assert f1_score("Denver Broncos", "Denver Broncos") == 1.0
    assert f1_score("Denver", "Denver Broncos") == pytest.approx(2 / 3)
    assert f1_score("Carolina Panthers", "Denver Broncos") == 0.0
    # Counter intersection: a repeated token only counts as often as it appears in both.
    assert f1_score("a b b", "b c") == pytest.approx(2 * 0.5 * 0.5 / 1.0)
    assert f1_score("x x", "x") == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_f1_empty_answers() -> None:
    assert f1_score("", "") == 0.0
    assert f1_score("the", "") == 0.0
    assert f1_score("", "", squad_v2=True) == 1.0
    assert f1_score("The.", "", squad_v2=True) == 1.0
    assert f1_score("Broncos", "", squad_v2=True) == 0.0
    assert f1_score("", "Broncos", squad_v2=True) == 0.0


def test_v1_scores_and_missing(caplog: pytest.LogCaptureFixture) -> None:
    ds = SquadDataset("1.1", (_ex("a", "Denver Broncos", "Broncos"), _ex("b", "blue"), _ex("c", "red")))
    with caplog.at_level(logging.WARNING):
        result = evaluate(ds, {"a": "Denver", "b": "Blue.", "zzz": "ignored"})
    assert result.version == "1.1"
    assert result.total == 3
    assert result.missing == 1
    assert result.has_ans is None and result.no_ans is None
    assert result.exact == pytest.approx(100 / 3)
    assert result.f1 == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)
    assert "1 of 3 questions have no prediction" in caplog.text


def test_v2_scores_breakdown_and_missing() -> None:
    ds = SquadDataset(
        "2.0",
        (
            _ex("a", "Denver Broncos"),
            _ex("b", impossible=True),
            _ex("c", impossible=True),
            _ex("d", "the", "Paris"),  # "the" normalises to "" and is dropped from the gold answers
            _ex("e", "missing"),
        ),
    )
    result = evaluate(ds, {"a": "Denver", "b": "", "c": "something", "d": "paris"})
    assert result.missing == 1
    assert result.total == 4
    assert result.has_ans is not None
    assert (result.has_ans.exact, result.has_ans.total) == (50.0, 2)
    assert result.has_ans.f1 == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert result.no_ans == EvalScores(exact=50.0, f1=50.0, total=2)
    assert result.exact == pytest.approx(50.0)
    assert result.f1 == pytest.approx(100 * (2 / 3 + 1 + 0 + 1) / 4)


def test_v2_gold_of_only_empty_answers_is_the_empty_answer() -> None:
    ds = SquadDataset("2.0", (_ex("a", "the", "."),))
    assert evaluate(ds, {"a": ""}).exact == 100.0
    assert evaluate(ds, {"a": "x"}).f1 == 0.0


def test_no_predictions_at_all() -> None:
    ds = SquadDataset("2.0", (_ex("a", "x"),))
    result = evaluate(ds, {})
    assert (result.exact, result.f1, result.total, result.missing) == (0.0, 0.0, 0, 1)
    assert evaluate(SquadDataset("1.1", ()), {}).total == 0


def test_result_dict_and_table() -> None:
    v2 = EvalResult("2.0", 78.5, 81.25, 10, 0, EvalScores(70.0, 80.0, 5), EvalScores(87.0, 87.0, 5))
    assert v2.to_dict() == {
        "version": "2.0",
        "exact": 78.5,
        "f1": 81.25,
        "total": 10,
        "missing": 0,
        "HasAns_exact": 70.0,
        "HasAns_f1": 80.0,
        "HasAns_total": 5,
        "NoAns_exact": 87.0,
        "NoAns_f1": 87.0,
        "NoAns_total": 5,
    }
    json.dumps(v2.to_dict())
    table = v2.format_table()
    assert "78.500" in table and "HasAns" in table and "NoAns" in table
    v1 = EvalResult("1.1", 1.0, 2.0, 3, 1)
    assert set(v1.to_dict()) == {"version", "exact", "f1", "total", "missing"}
    assert "HasAns" not in v1.format_table()
    assert "missing predictions: 1" in v1.format_table()


def test_load_predictions_json_and_gz(tmp_path: Path) -> None:
    preds = {"a": "x", "b": ""}
    plain = tmp_path / "p.json"
    plain.write_text(json.dumps(preds), encoding="utf-8")
    gz = tmp_path / "p.json.gz"
    gz.write_bytes(gzip.compress(json.dumps(preds).encode()))
    assert load_predictions(str(plain)) == preds
    assert load_predictions(str(gz)) == preds


def test_load_predictions_docqa_directory(tmp_path: Path) -> None:
    answers = tmp_path / "run" / "answers"
    answers.mkdir(parents=True)
    pq.write_table(
        pa.table({"id": ["a", "b", None], "answer": ["x", None, "y"], "score": [0.5, 0.1, 0.2]}),
        answers / "part-0.parquet",
    )
    pq.write_table(pa.table({"id": [7], "answer": ["z"]}), answers / "part-1.parquet")
    (answers / "notes.txt").write_text("ignored", encoding="utf-8")
    assert load_predictions(str(tmp_path / "run")) == {"a": "x", "b": "", "7": "z"}


def test_load_predictions_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"answers/\*\.parquet"):
        load_predictions(str(tmp_path))
    answers = tmp_path / "run" / "answers"
    answers.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), answers / "part-0.parquet")
    with pytest.raises(InputError, match="cannot read columns id, answer"):
        load_predictions(str(tmp_path / "run"))
    pq.write_table(pa.table({"id": ["a", "a"], "answer": ["x", "y"]}), answers / "part-0.parquet")
    with pytest.raises(InputError, match="conflicting answers"):
        load_predictions(str(tmp_path / "run"))
    other = tmp_path / "p.csv"
    other.write_text("a,b", encoding="utf-8")
    with pytest.raises(InputError, match=r"\.json / \.json\.gz file or a docqa output directory"):
        load_predictions(str(other))
    with pytest.raises(InputError, match="does not exist"):
        load_predictions(str(tmp_path / "absent.json"))
    for name, content in [("list.json", "[1]"), ("num.json", '{"a": 1}'), ("broken.json", "{")]:
        (tmp_path / name).write_text(content, encoding="utf-8")
        with pytest.raises(InputError, match=name.replace(".", r"\.")):
            load_predictions(str(tmp_path / name))


@pytest.fixture(scope="module")
def dev_v1(squad_dir: Path) -> SquadDataset:
    return load_squad(str(squad_dir / "dev-v1.1.json.zip"))


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ("bert-ensemble", (86.206, 92.196, 0)),
        ("match-lstm-ensemble", (67.635, 76.756, 0)),
        # The published baseline has no prediction for 13 questions; v1.1 scores them 0.
        ("logistic-regression-baseline", (40.142, 50.982, 13)),
    ],
)
def test_golden_v1(
    squad_dir: Path, dev_v1: SquadDataset, system: str, expected: tuple[float, float, int]
) -> None:
    predictions = load_predictions(str(squad_dir / "predictions" / f"v1.1-{system}.json.gz"))
    result = evaluate(dev_v1, predictions)
    assert result.total == 10_570
    assert (round(result.exact, 3), round(result.f1, 3), result.missing) == expected


def test_golden_v2(squad_dir: Path) -> None:
    dataset = load_squad(str(squad_dir / "dev-v2.0.rebuilt.json.gz"))
    result = evaluate(dataset, load_predictions(str(squad_dir / "predictions" / "v2.0-bert-single.json.gz")))
    assert (round(result.exact, 3), round(result.f1, 3)) == (78.742, 81.775)
    assert (result.total, result.missing) == (11_873, 0)
    assert result.has_ans is not None and result.no_ans is not None
    assert (result.has_ans.total, result.no_ans.total) == (5_928, 5_945)
    assert result.no_ans.exact == result.no_ans.f1


def test_golden_from_docqa_directory(squad_dir: Path, dev_v1: SquadDataset, tmp_path: Path) -> None:
    predictions = load_predictions(str(squad_dir / "predictions" / "v1.1-bert-ensemble.json.gz"))
    answers = tmp_path / "answers"
    answers.mkdir()
    items = sorted(predictions.items())
    half = len(items) // 2
    for part, chunk in enumerate((items[:half], items[half:])):
        ids, texts = zip(*chunk, strict=True)
        pq.write_table(pa.table({"id": list(ids), "answer": list(texts)}), answers / f"part-{part}.parquet")
    result = evaluate(dev_v1, load_predictions(str(tmp_path)))
    assert (round(result.exact, 3), round(result.f1, 3)) == (86.206, 92.196)
