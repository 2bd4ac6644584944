"""docqa's extractive question-answering engine, in plain Python (no Apache Beam).

The Python API (documented in the README, "Python API"):

    load_config(paths, overrides) -> QAConfig        layered YAML files and `section.key=value` overrides
    load_model(config) -> ModelRunner                the checkpoint of `config.model`
    answer_rows(model, config, rows) -> Answer | Rejection per row, in input order
    answer_table(model, config, table) -> (answers, rejections) pyarrow Tables, as `docqa predict` writes
    answer_tables(model, config, documents, questions) -> the same, of each question asked of its documents
    predict(config, input, output, documents=, questions=) -> the `docqa predict` job; its `_run.json`

The folders follow the data flow: `stages/` (pure: validate, featurize, batch, decode, aggregate),
`engine/` (the one stage loop), `runtime/` (model runners), `io/`, `jobs/`, `train/`, `evaluation/`,
`tools/` (see docs/ARCHITECTURE.md). Names are imported lazily: `import qa_core` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qa_core import versions

__version__ = versions.DOCQA_VERSION

_EXPORTS = {
    "load_config": "qa_core.config",
    "QAConfig": "qa_core.config",
    "load_model": "qa_core.api",
    "answer_rows": "qa_core.api",
    "answer_table": "qa_core.api",
    "answer_tables": "qa_core.api",
    "predict": "qa_core.jobs.predict",
    "Answer": "qa_core.records",
    "Rejection": "qa_core.records",
    "Reason": "qa_core.records",
    "ModelRunner": "qa_core.runtime.runner",
    "JobError": "qa_core.errors",
}
__all__ = [
    "Answer",
    "JobError",
    "ModelRunner",
    "QAConfig",
    "Reason",
    "Rejection",
    "__version__",
    "answer_rows",
    "answer_table",
    "answer_tables",
    "load_config",
    "load_model",
    "predict",
]

if TYPE_CHECKING:
    from qa_core.api import answer_rows, answer_table, answer_tables, load_model
    from qa_core.config import QAConfig, load_config
    from qa_core.errors import JobError
    from qa_core.jobs.predict import predict
    from qa_core.records import Answer, Reason, Rejection
    from qa_core.runtime.runner import ModelRunner


def __getattr__(name: str) -> Any:
    """Imports an exported name on first use (torch and transformers load only when needed)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qa_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
