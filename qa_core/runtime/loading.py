"""The names model loading had before `qa_core.runtime.loaders`, kept for callers not yet moved.

`load_qa_model` is `qa_core.runtime.loaders.load_runner`; new code imports from `qa_core.runtime.loaders`.
"""

from __future__ import annotations

from qa_core.runtime.loaders import (
    describe_model,
    load_runner,
    load_tokenizer,
    read_model_limits,
    resolve_device,
)

load_qa_model = load_runner

__all__ = [
    "describe_model",
    "load_qa_model",
    "load_runner",
    "load_tokenizer",
    "read_model_limits",
    "resolve_device",
]
