"""Training: the loop (trainer.py), its job config, LR schedule, checkpoints and distributed set-up."""
from .config import TrainJob
from .schedule import lr_at
from .trainer import NonFiniteError, Reporter, train

__all__ = ["NonFiniteError", "Reporter", "TrainJob", "lr_at", "train"]
