"""Commands around a job: `docqa estimate` before it, `docqa report` after it.

`estimate.py` predicts a job's rows, windows, tokens and hours from a tokenized sample; `report.py` writes
the HTML run report of an output folder, with its figures drawn by `report_figures.py`.
"""
