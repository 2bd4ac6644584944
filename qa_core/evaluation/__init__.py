"""Scoring answers against SQuAD gold answers, and calibrating the scores.

`squad.py` loads SQuAD files (and converts them to Parquet), `evaluate.py` computes the official exact
match and F1, `reliability.py` the calibration metrics and temperature fit, `calibrate.py` is
`docqa calibrate`, and `calibration.py` reads and applies a model's stored temperature.
"""
