"""The engine: the one stage loop every job runs, over the pure stages of `qa_core.stages`.

`host.py` (rows -> records -> windows -> planned sort buffers), `contained.py` (a batch through the model
and the decoder, split on failure), `assembly.py` (a row's windows joined into its answer), `loop.py`
(`QAEngine`: all of it in order), `stats.py` (the run's counters), `prefetch.py` (the host half in a
background thread).
"""
