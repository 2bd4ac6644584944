"""What this host's CPU can compute natively, and the refusal of a half-precision dtype it would emulate.

bf16 (`configs/cpu-fast.yaml`) is more than twice as fast as fp32 on CPUs with AVX512-BF16 or AMX-BF16,
whose oneDNN kernels compute in bf16; on a CPU without them every bf16 matmul is converted and runs at a
fraction of fp32's speed (0.21x on an AVX2-only CPU). fp16 likewise needs AVX512-FP16 or AMX-FP16 (x86) or
the fp16 arithmetic extension (ARM). `probe_cpu` says which; `check_cpu_dtype` refuses a model load that
would emulate its dtype, unless `DOCQA_ALLOW_SLOW_DTYPE=1` is set in the environment.

The probe asks torch (`torch.cpu.get_capabilities()`, cpuinfo-based, every OS and architecture; torch
>= 2.10), else reads `/proc/cpuinfo` (Linux); with neither it says "unknown" and nothing is refused.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qa_core.errors import ModelLoadError

logger = logging.getLogger(__name__)

# Set to 1 to load a bf16/fp16 model on a CPU without native support anyway (a warning instead).
ALLOW_SLOW_DTYPE_ENV = "DOCQA_ALLOW_SLOW_DTYPE"

# The flags that decide, under torch's names (`torch.cpu.get_capabilities()`).
_X86_BF16 = ("avx512_bf16", "amx_bf16")
_X86_FP16 = ("avx512_fp16", "amx_fp16")
_ARM_BF16 = ("bf16", "sve_bf16")
_ARM_FP16 = ("fp16_arith",)
_REPORTED = ("avx2", "avx512_f", "amx_tile", *_X86_BF16, *_X86_FP16, *_ARM_BF16, *_ARM_FP16)
# `/proc/cpuinfo` spellings of those flags where they differ from torch's.
_PROC_NAMES = {"avx512f": "avx512_f", "asimdhp": "fp16_arith"}


@dataclass(frozen=True)
class CpuCapability:
    """This host's CPU, as far as the dtypes docqa runs are concerned.

    Attributes:
        capability: torch's vectorized kernel level (`torch.backends.cpu.get_cpu_capability()`:
            "AVX512", "AVX2", "DEFAULT", "SVE256", ...).
        architecture: The machine ("x86_64", "arm64", ...).
        has_native_bf16: bf16 arithmetic in hardware (AVX512-BF16 / AMX-BF16, ARM BF16); None: unknown.
        has_native_fp16: fp16 arithmetic in hardware (AVX512-FP16 / AMX-FP16, ARM FP16); None: unknown.
        flags: The relevant flags present (torch's names, sorted).
        source: Where the flags come from: "torch", "/proc/cpuinfo" or "none".
    """

    capability: str
    architecture: str
    has_native_bf16: bool | None
    has_native_fp16: bool | None
    flags: tuple[str, ...]
    source: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for `_run.json` and `docqa bench`)."""
        info = asdict(self)
        info["flags"] = list(self.flags)
        return info


@functools.lru_cache(maxsize=1)
def probe_cpu() -> CpuCapability:
    """This host's CPU capability (probed once per process)."""
    import torch

    capability = str(torch.backends.cpu.get_cpu_capability())
    architecture = platform.machine() or "unknown"
    present, source = _torch_flags()
    if present is None:
        present, source = _proc_cpuinfo_flags(Path("/proc/cpuinfo"))
    if present is None:
        return CpuCapability(capability, architecture, None, None, (), "none")
    flags = tuple(sorted(f for f in _REPORTED if f in present))
    return CpuCapability(
        capability,
        architecture,
        has_native_bf16=any(f in present for f in (*_X86_BF16, *_ARM_BF16)),
        has_native_fp16=any(f in present for f in (*_X86_FP16, *_ARM_FP16)),
        flags=flags,
        source=source,
    )


def _torch_flags() -> tuple[set[str] | None, str]:
    import torch

    get_capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.10
    if get_capabilities is None:
        return None, "none"
    try:
        found = get_capabilities()
    except Exception as err:  # cpuinfo failed to initialize: fall back to /proc/cpuinfo
        logger.debug("torch.cpu.get_capabilities() failed: %s", err)
        return None, "none"
    return {name for name, value in found.items() if value is True}, "torch"


def _proc_cpuinfo_flags(path: Path) -> tuple[set[str] | None, str]:
    """The first processor's `flags` (x86) or `Features` (ARM) line of a Linux `/proc/cpuinfo`."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, "none"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return {_PROC_NAMES.get(flag, flag) for flag in value.split()}, str(path)
    return None, "none"


# dtype -> (the CpuCapability field, the flags that give it on x86 and on ARM, what to run on instead)
_NATIVE = {
    "bf16": ("has_native_bf16", "avx512_bf16/amx_bf16", "bf16", "AVX512-BF16/AMX"),
    "fp16": ("has_native_fp16", "avx512_fp16/amx_fp16", "fp16_arith", "AVX512-FP16/AMX-FP16"),
}


def check_cpu_dtype(dtype: str, cpu: CpuCapability | None = None) -> None:
    """Refuses a bf16/fp16 model on a CPU that would emulate that dtype (several times slower than fp32).

    Args:
        dtype: The configured `model.dtype` ("fp32", "bf16", "fp16"); fp32 always passes.
        cpu: The CPU to judge (default: this host's, `probe_cpu()`).

    An unknown capability (no probe available) passes; so does any dtype when the environment sets
    `DOCQA_ALLOW_SLOW_DTYPE=1` (a warning is logged instead).

    Raises:
        ModelLoadError: The CPU has no native arithmetic for `dtype`.
    """
    if dtype not in _NATIVE:
        return
    cpu = cpu or probe_cpu()
    attribute, x86_flags, arm_flags, instead = _NATIVE[dtype]
    if getattr(cpu, attribute) is not False:  # native, or unknown: nothing to refuse
        return
    arm = cpu.architecture.lower() in ("arm64", "aarch64")
    problem = (
        f"model.dtype={dtype} on a CPU without native {dtype} (found {cpu.capability}; no "
        f"{arm_flags if arm else x86_flags}) runs several times slower than fp32"
    )
    if os.environ.get(ALLOW_SLOW_DTYPE_ENV) == "1":
        logger.warning("%s; running anyway (%s=1)", problem, ALLOW_SLOW_DTYPE_ENV)
        return
    instead = f"an ARM CPU with {arm_flags.upper()}" if arm else f"a CPU with {instead}"
    raise ModelLoadError(
        f"{problem}; use model.dtype=fp32 or run on {instead} (or set {ALLOW_SLOW_DTYPE_ENV}=1 to run anyway)"
    )


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Runs the block with `threads` torch threads, then restores the count.

    A launcher that probes or plans batch shapes for processes answering with fewer threads than its own
    (predict's workers, Spark's tasks) does it as they will run: shapes are tuned per thread count.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
