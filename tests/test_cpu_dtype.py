"""bf16/fp16 on a CPU without native support is refused (`qa_core.runtime.cpu`), and the CPU probe.

The command-line refusal (one line, exit code 2) is in tests/test_model_checks.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from qa_core.errors import ModelLoadError
from qa_core.runtime import cpu
from qa_core.runtime.cpu import CpuCapability, check_cpu_dtype, probe_cpu

AVX2 = CpuCapability("AVX2", "x86_64", False, False, ("avx2",), "test")


def test_bf16_on_a_cpu_without_native_bf16_is_refused() -> None:
    with pytest.raises(ModelLoadError) as err:
        check_cpu_dtype("bf16", AVX2)
    assert str(err.value).startswith(
        "model.dtype=bf16 on a CPU without native bf16 (found AVX2; no avx512_bf16/amx_bf16) runs several "
        "times slower than fp32; use model.dtype=fp32 or run on a CPU with AVX512-BF16/AMX"
    )
    with pytest.raises(ModelLoadError, match="no avx512_fp16/amx_fp16"):
        check_cpu_dtype("fp16", AVX2)
    arm = CpuCapability("DEFAULT", "aarch64", False, True, ("fp16_arith",), "test")
    with pytest.raises(ModelLoadError, match=r"found DEFAULT; no bf16\).*an ARM CPU with BF16"):
        check_cpu_dtype("bf16", arm)
    check_cpu_dtype("fp16", arm)


def test_native_fp32_or_unknown_cpus_pass(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    check_cpu_dtype("fp32", AVX2)
    check_cpu_dtype("bf16", CpuCapability("AVX512", "x86_64", True, False, ("amx_bf16",), "test"))
    check_cpu_dtype("bf16", CpuCapability("AVX2", "x86_64", None, None, (), "none"))  # cannot tell
    monkeypatch.setenv("DOCQA_ALLOW_SLOW_DTYPE", "1")
    with caplog.at_level(logging.WARNING, logger="qa_core.runtime.cpu"):
        check_cpu_dtype("bf16", AVX2)
    assert "running anyway (DOCQA_ALLOW_SLOW_DTYPE=1)" in caplog.text


def test_the_probe_reads_proc_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    flags, source = cpu._proc_cpuinfo_flags(x86)
    assert (
        flags is not None and {"avx2", "avx512_f", "avx512_bf16", "amx_tile"} <= flags and source == str(x86)
    )
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimdhp bf16\n")
    flags, _ = cpu._proc_cpuinfo_flags(arm)
    assert flags is not None and {"fp16_arith", "bf16"} <= flags
    assert cpu._proc_cpuinfo_flags(tmp_path / "missing") == (None, "none")


def test_this_cpu_is_probed() -> None:
    found = probe_cpu()
    assert found.capability == torch.backends.cpu.get_cpu_capability()
    assert json.loads(json.dumps(found.to_dict()))["capability"] == found.capability
