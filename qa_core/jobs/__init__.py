"""The jobs behind the commands: `docqa predict` in one process or several, and the error guard.

`predict.py` runs the engine from Parquet input to the output layout, `workers.py` splits it over N
processes (`--workers`), and `guard.py` turns a job-level error into one line on stderr and exit code 2.
"""
