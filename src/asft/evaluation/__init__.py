"""Evaluation: harmful score and fine-tuning accuracy of a model (``asft eval``)."""

from asft.evaluation.run import *  # noqa: F401,F403  (placeholder during the move)
from asft.evaluation.run import _load_generations, _score  # noqa: F401
