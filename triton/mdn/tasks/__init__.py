"""Synthetic tasks: MQAR (multi-query associative recall, Zoology) generator and trainer."""
from .mqar import IGNORE_INDEX, MQARConfig, mqar_accuracy, mqar_batch, mqar_loss

__all__ = ["IGNORE_INDEX", "MQARConfig", "mqar_accuracy", "mqar_batch", "mqar_loss"]
