"""Files in and out: Parquet input, the output layout, and where files live (local or fsspec URLs).

`read.py` resolves and checks the input and streams its rows; `sources.py` makes a job's input numbered
rows read by ranges (`InputSource`: one table, or the pairs of two tables, `pairs.py` over `pairs_plan.py`),
opened from what the user named (`spec.py`); `sample.py` reads a sample spread over an input. `schema.py`
is the output contract (folder layout, Arrow schemas), `write.py` writes it for `docqa predict`,
`run_info.py` builds `_run.json`, and `storage.py` turns object-store failures into one-line errors.
"""
