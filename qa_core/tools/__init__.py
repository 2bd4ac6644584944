"""Commands around a job: `docqa estimate` before it, `docqa report` after it.

`estimate.py` predicts a job's rows, windows, tokens and hours from a tokenized sample; `report.py` writes
the HTML run report of an output folder from its parts: `report_scan.py` (one streamed pass over the
tables), `report_context.py` (the shown answers' contexts, by id), `report_gold.py` (EM / F1 of the job's
questions), `report_sections.py` (samples, lowest scores, rejection examples, rates per question),
`report_html.py` (the one escaping rule, tables, the page) and `report_figures.py` (the PNG figures).
"""
