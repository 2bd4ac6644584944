"""docqa's extractive question-answering engine, in plain Python (no Apache Beam).

The data flow, one module per stage: `validate` (row -> record) -> `featurize` (record -> windows) ->
`batch` (windows -> padded batches) -> `model` (batch -> logits) -> `decode` (logits -> window
candidates) -> `aggregate` (candidates -> answer) -> `schema`/`write` (answers -> Parquet).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("docqa-beam")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
