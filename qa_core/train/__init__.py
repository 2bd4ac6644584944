"""`docqa train`: fine-tuning an encoder for extractive QA on SQuAD with the seed objective.

Training windows come from the inference featurizer; `config.py` (the `train` section), `data.py`
(labelled windows), `trainer.py`, `checkpoints.py` and `evaluation.py` (the final EM/F1).
"""
