"""qa_core.evaluation.squad: loading SQuAD files in every container form, converting them to Parquet."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path
from typing import Any

import fsspec
import pyarrow.parquet as pq
import pytest

from qa_core.errors import InputError
from qa_core.evaluation.squad import (
    SQUAD_TABLE_SCHEMA,
    SquadAnswer,
    SquadDataset,
    SquadExample,
    convert_squad,
    load_squad,
    squad_to_table,
)

SQUAD_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad"


def _doc(version: str = "1.1", *, impossible: bool | None = None) -> dict[str, Any]:
    qa: dict[str, Any] = {
        "id": "q1",
        "question": "Who?",
        "answers": [{"text": "Alice", "answer_start": 0}, {"text": "Alice Smith", "answer_start": 0}],
    }
    qa2: dict[str, Any] = {"id": "q2", "question": "What?", "answers": []}
    qa3: dict[str, Any] = {"id": "q3", "question": "Q?", "answers": [{"text": "Bob", "answer_start": 0}]}
    if impossible is not None:
        qa["is_impossible"] = False
        qa2["is_impossible"] = impossible
    return {
        "version": version,
        "data": [
            {"title": "T1", "paragraphs": [{"context": "Alice Smith ran.", "qas": [qa, qa2]}]},
            {"title": "T2", "paragraphs": [{"context": "Bob.", "qas": [qa3]}]},
        ],
    }


def _write(path: Path, doc: Any) -> str:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


@pytest.fixture
def squad_dir() -> Path:
    if not SQUAD_DIR.is_dir():
        pytest.skip(f"shared SQuAD data not found at {SQUAD_DIR}")
    return SQUAD_DIR


def test_load_plain_json(tmp_path: Path) -> None:
    ds = load_squad(_write(tmp_path / "s.json", _doc()))
    assert ds.version == "1.1"
    assert [ex.id for ex in ds.examples] == ["q1", "q2", "q3"]
    first = ds.examples[0]
    assert first == SquadExample(
        id="q1",
        title="T1",
        context="Alice Smith ran.",
        question="Who?",
        answers=(SquadAnswer("Alice", 0), SquadAnswer("Alice Smith", 0)),
        is_impossible=False,
    )
    assert ds.examples[2].title == "T2"


def test_gzip_zip_and_fsspec_forms_agree(tmp_path: Path) -> None:
    doc = _doc()
    plain = load_squad(_write(tmp_path / "s.json", doc))
    gz = tmp_path / "s.json.gz"
    gz.write_bytes(gzip.compress(json.dumps(doc).encode()))
    zipped = tmp_path / "s.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("nested/s.json", json.dumps(doc))
        archive.writestr("README.txt", "not json")
    with fsspec.open("memory://squad/s.json", "w") as handle:
        handle.write(json.dumps(doc))
    assert load_squad(str(gz)) == plain
    assert load_squad(str(zipped)) == plain
    assert load_squad("memory://squad/s.json") == plain
    assert load_squad(f"file://{tmp_path / 's.json'}") == plain


@pytest.mark.parametrize(
    ("version", "impossible", "expected"),
    [
        ("1.1", None, "1.1"),
        ("v2.0", None, "2.0"),
        ("2.0", None, "2.0"),
        ("1.1", False, "2.0"),
        ("1.1", True, "2.0"),
    ],
)
def test_version_detection(tmp_path: Path, version: str, impossible: bool | None, expected: str) -> None:
    ds = load_squad(_write(tmp_path / "s.json", _doc(version, impossible=impossible)))
    assert ds.version == expected
    assert ds.examples[1].is_impossible is bool(impossible)


def test_missing_version_is_v1(tmp_path: Path) -> None:
    doc = _doc()
    del doc["version"]
    assert load_squad(_write(tmp_path / "s.json", doc)).version == "1.1"


def _break(doc: dict[str, Any], how: str) -> Any:
    qa = doc["data"][0]["paragraphs"][0]["qas"][0]
    if how == "not-object":
        return [1, 2]
    if how == "no-data":
        del doc["data"]
    elif how == "no-context":
        del doc["data"][0]["paragraphs"][0]["context"]
    elif how == "id-type":
        qa["id"] = 7
    elif how == "answer-start-type":
        qa["answers"][0]["answer_start"] = "0"
    elif how == "answer-start-bool":
        qa["answers"][0]["answer_start"] = True
    elif how == "answers-not-list":
        qa["answers"] = "Alice"
    elif how == "impossible-type":
        qa["is_impossible"] = "no"
    elif how == "duplicate-id":
        doc["data"][1]["paragraphs"][0]["qas"][0]["id"] = "q1"
    return doc


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("not-object", "expected an object"),
        ("no-data", "missing key 'data'"),
        ("no-context", r"data\[0\]\.paragraphs\[0\]: missing key 'context'"),
        ("id-type", r"qas\[0\]\.id: expected str"),
        ("answer-start-type", r"answers\[0\]\.answer_start: expected int"),
        ("answer-start-bool", r"answers\[0\]\.answer_start: expected int"),
        ("answers-not-list", "answers: expected list"),
        ("impossible-type", "is_impossible: expected bool"),
        ("duplicate-id", "duplicate question id 'q1'"),
    ],
)
def test_malformed_structure(tmp_path: Path, how: str, message: str) -> None:
    path = _write(tmp_path / "bad.json", _break(_doc(), how))
    with pytest.raises(InputError, match=message) as info:
        load_squad(path)
    assert "bad.json" in str(info.value)


def test_malformed_containers(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.json: not valid JSON"):
        load_squad(str(bad_json))
    bad_gz = tmp_path / "bad.json.gz"
    bad_gz.write_bytes(gzip.compress(b"{}")[:12])
    with pytest.raises(InputError, match="gzip"):
        load_squad(str(bad_gz))
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as archive:
        archive.writestr("a.json", "{}")
        archive.writestr("b.json", "{}")
    with pytest.raises(InputError, match=r"two\.zip: .*exactly one \.json member, found 2"):
        load_squad(str(two))
    none = tmp_path / "none.zip"
    with zipfile.ZipFile(none, "w") as archive:
        archive.writestr("a.txt", "{}")
    with pytest.raises(InputError, match="found 0"):
        load_squad(str(none))
    with pytest.raises(InputError, match="does not exist"):
        load_squad(str(tmp_path / "absent.json"))


def test_table_schema_and_content(tmp_path: Path) -> None:
    ds = load_squad(_write(tmp_path / "s.json", _doc()))
    table = squad_to_table(ds)
    assert table.schema.equals(SQUAD_TABLE_SCHEMA)
    assert table.column("id").to_pylist() == ["q1", "q2", "q3"]
    assert table.column("answers").to_pylist()[:2] == [
        [{"text": "Alice", "answer_start": 0}, {"text": "Alice Smith", "answer_start": 0}],
        [],
    ]
    assert squad_to_table(SquadDataset("1.1", ())).num_rows == 0


def test_convert_round_trip(tmp_path: Path) -> None:
    source = _write(tmp_path / "s.json", _doc())
    out = tmp_path / "deep" / "dir" / "s.parquet"
    assert convert_squad(source, str(out), row_group_size=2) == 3
    parquet = pq.ParquetFile(out)
    assert parquet.metadata.num_row_groups == 2
    table = parquet.read()
    assert table.schema.equals(SQUAD_TABLE_SCHEMA)
    assert table.equals(squad_to_table(load_squad(source)))
    with pytest.raises(ValueError, match="row_group_size"):
        convert_squad(source, str(out), row_group_size=0)


def test_convert_to_fsspec_url(tmp_path: Path) -> None:
    source = _write(tmp_path / "s.json", _doc())
    assert convert_squad(source, "memory://out/squad/s.parquet") == 3
    with fsspec.open("memory://out/squad/s.parquet", "rb") as handle:
        assert pq.read_table(handle).num_rows == 3


def test_dev_v1_real_file(squad_dir: Path, tmp_path: Path) -> None:
    ds = load_squad(str(squad_dir / "dev-v1.1.json.zip"))
    assert ds.version == "1.1"
    assert len(ds.examples) == 10_570
    assert len({ex.context for ex in ds.examples}) == 2_067
    assert len({ex.title for ex in ds.examples}) == 48
    assert ds.examples[0].id == "56be4db0acb8001400a502ec"
    assert all(ex.answers and not ex.is_impossible for ex in ds.examples)
    out = tmp_path / "dev.parquet"
    assert convert_squad(str(squad_dir / "dev-v1.1.json.zip"), str(out)) == 10_570
    parquet = pq.ParquetFile(out)
    assert parquet.metadata.num_rows == 10_570
    assert parquet.metadata.num_row_groups == 11
    assert parquet.read(columns=["id"]).column("id").to_pylist() == [ex.id for ex in ds.examples]


def test_dev_v2_real_file(squad_dir: Path) -> None:
    ds = load_squad(str(squad_dir / "dev-v2.0.rebuilt.json.gz"))
    assert ds.version == "2.0"
    assert len(ds.examples) == 11_873
    impossible = [ex for ex in ds.examples if ex.is_impossible]
    assert len(impossible) == 5_945
    assert all(not ex.answers for ex in impossible)
