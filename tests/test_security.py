"""Safety switches: checkpoint code and pickle weights never run by default; secrets never written.

(`s3://` credentials are checked against logs and `_run.json` in test_object_storage.py.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from docqa.cli import main
from qa_core.config import QAConfig
from tests.conftest import write_parquet

ROWS = [{"id": "a", "question": "what?", "context": "the river church"}]


def predict_with(model_dir: Path, tmp_path: Path, *extra: str) -> int:
    tmp_path.mkdir(exist_ok=True)
    source = write_parquet(tmp_path / "in.parquet", ROWS)
    argv = ["predict", "--input", str(source), "--output", str(tmp_path / "out"), "--model", str(model_dir)]
    return main([*argv, "--no-progress", *extra])


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """docqa's own lines on stderr (libraries may add progress bars and warnings)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("docqa ")]


def test_switches_are_off_by_default() -> None:
    assert QAConfig().model.trust_remote_code is False and QAConfig().model.allow_pickle is False
    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "base.yaml").read_text())
    assert not base["model"].get("trust_remote_code") and not base["model"].get("allow_pickle")


def with_custom_code(tiny_model_dir: Path, target: Path, model_type: str | None) -> Path:
    """A copy of the tiny model whose config points at Python code that leaves a marker when imported."""
    shutil.copytree(tiny_model_dir, target)
    marker = target / "CODE_WAS_EXECUTED"
    (target / "evil_code.py").write_text(
        f"open({str(marker)!r}, 'w').write('pwned')\n"
        "from transformers import BertConfig, BertForQuestionAnswering\n"
        "class EvilConfig(BertConfig):\n    model_type = 'evil-qa'\n"
        "class EvilModel(BertForQuestionAnswering):\n    config_class = EvilConfig\n"
    )
    config = json.loads((target / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "evil_code.EvilConfig",
        "AutoModelForQuestionAnswering": "evil_code.EvilModel",
    }
    if model_type:
        config["model_type"] = model_type
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_checkpoint_code_is_never_imported_by_default(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A known architecture with an auto_map: the library's own code is used, the checkpoint's ignored.
    known = with_custom_code(tiny_model_dir, tmp_path / "known", model_type=None)
    assert predict_with(known, tmp_path / "run1") == 0
    assert not (known / "CODE_WAS_EXECUTED").exists()
    # An architecture only the checkpoint's code defines: refused with what to change.
    unknown = with_custom_code(tiny_model_dir, tmp_path / "unknown", model_type="evil-qa")
    assert predict_with(unknown, tmp_path / "run2") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "model.trust_remote_code=true" in err[0] and "custom code" in err[0]
    assert not (unknown / "CODE_WAS_EXECUTED").exists()


def pickled_copy(tiny_model_dir: Path, target: Path) -> Path:
    from safetensors.torch import load_file

    shutil.copytree(tiny_model_dir, target)
    weights = target / "model.safetensors"
    torch.save(load_file(str(weights)), target / "pytorch_model.bin")
    weights.unlink()
    return target


@pytest.mark.parametrize("engine", ["predict", "run"])
def test_pickle_weights_need_allow_pickle(
    engine: str, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pickled = pickled_copy(tiny_model_dir, tmp_path / "pickled")
    source = write_parquet(tmp_path / "in.parquet", ROWS)
    argv = [engine, "--input", str(source), "--output", str(tmp_path / "out"), "--model", str(pickled)]
    argv += ["--no-progress"] if engine == "predict" else []
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model.allow_pickle=true" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert main([*argv, "--set", "model.allow_pickle=true"]) == 0
    info = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert info["config"]["model"]["allow_pickle"] is True and info["counts"]["answered"] == 1


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_even_allowed_pickle_never_runs_code(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = pickled_copy(tiny_model_dir, tmp_path / "evil")
    marker = tmp_path / "PICKLE_RAN_CODE"
    torch.save({"weight": _RunsCode(marker)}, evil / "pytorch_model.bin")
    assert predict_with(evil, tmp_path, "--set", "model.allow_pickle=true") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "refused to unpickle" in err[0]
    assert not marker.exists()


def test_secret_beam_options_are_not_written(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Credentials passed as Beam flags reach Beam only: not `_run.json`, not docqa's log lines."""
    caplog.set_level(logging.INFO)
    secret = "s3cr3t-flag-value-91be"
    source = write_parquet(tmp_path / "in.parquet", ROWS)
    out = tmp_path / "out"
    argv = ["run", "--input", str(source), "--output", str(out), "--model", str(tiny_model_dir)]
    assert main([*argv, f"--s3_secret_access_key={secret}", "--s3_access_key_id=AKIAEXAMPLE"]) == 0
    assert secret not in (out / "_run.json").read_text()
    assert secret not in caplog.text


def test_credentials_in_urls_are_redacted() -> None:
    from qa_core.errors import InputError
    from qa_core.io.read import resolve_inputs
    from qa_core.io.storage import redact_url
    from qa_core.jobs.run_info import run_info

    assert redact_url("s3://AKIA:s3cr3t@bucket/in/") == "s3://***@bucket/in/"
    assert redact_url("https://user:s3cr3t@host/a.parquet") == "https://***@host/a.parquet"
    assert redact_url("/data/a@b.parquet") == "/data/a@b.parquet"
    info = run_info(
        QAConfig(),
        model_id="m",
        revision="r",
        device="cpu",
        engine="predict",
        inputs=["https://user:s3cr3t@host/a.parquet"],
        counts={},
        wall_seconds=1.0,
    )
    assert "s3cr3t" not in json.dumps(info)
    with pytest.raises(InputError) as raised:
        resolve_inputs("memory://user:s3cr3t@nowhere/*.parquet")
    assert "s3cr3t" not in str(raised.value)
