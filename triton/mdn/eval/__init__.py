"""Evaluation of trained checkpoints: held-out loss / perplexity and length extrapolation (perplexity.py)."""
from .perplexity import EvalConfig, evaluate_run

__all__ = ["EvalConfig", "evaluate_run"]
