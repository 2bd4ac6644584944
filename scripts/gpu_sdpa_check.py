"""Forward-only timing of real SQuAD batch shapes on CUDA, first (cold) and second (warm) pass.

Tells per-shape one-time costs (attention plan building, kernel selection) from steady-state speed, with
docqa's SDPA backends (`runtime.torch_runner.CUDA_ATTENTION_BACKENDS`, no cuDNN attention) or with cuDNN
attention allowed too (torch's own choice):
    python scripts/gpu_sdpa_check.py SQUAD_JSON docqa|with-cudnn bf16|fp32 PAD_MULTIPLE [N_QUESTIONS]
"""

from __future__ import annotations

import sys
import time

import torch
from torch.nn.attention import SDPBackend

from docqa.bench import _rows
from docqa.bench_modes import _windows
from qa_core.config import load_config
from qa_core.runtime import torch_runner as qa_model
from qa_core.runtime.loaders import load_runner
from qa_core.stages.batch import collate, plan_batches


def main() -> None:
    """Prints the three passes' times."""
    data, backends, dtype, multiple = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    n = int(sys.argv[5]) if len(sys.argv) > 5 else 2000
    on_gpu = torch.cuda.is_available()  # off a GPU it only smoke-tests this script
    device = ["runtime.device=cpu", "runtime.require_gpu=false"] if not on_gpu else []
    config = load_config(["configs/dataflow-gpu.yaml"], [f"model.dtype={dtype}", *device])
    model = load_runner(config.model, config.runtime)
    windows = _windows(model, config, _rows(data, n))
    batches = [collate(g, model.pad_token_id, multiple) for g in plan_batches(windows, config.batch)]
    shapes = sorted({b.input_ids.shape for b in batches})
    if backends == "with-cudnn":
        # TorchRunner.forward reads this list at each call: widen it to what torch may pick by itself.
        qa_model.CUDA_ATTENTION_BACKENDS = [*qa_model.CUDA_ATTENTION_BACKENDS, SDPBackend.CUDNN_ATTENTION]
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    times = []
    for _ in range(3):
        sync()
        started = time.perf_counter()
        for batch in batches:
            model.forward(batch)
        sync()
        times.append(time.perf_counter() - started)
    print(
        f"sdpa={backends} dtype={dtype} pad={multiple}: {len(batches)} batches, {len(shapes)} shapes, "
        f"{len(windows)} windows; pass 1/2/3: "
        + " / ".join(f"{t:.3f} s" for t in times)
        + f"; warm {len(windows) / times[-1]:.0f} windows/s"
    )


if __name__ == "__main__":
    main()
