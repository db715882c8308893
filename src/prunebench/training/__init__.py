"""Training and evaluation."""

from prunebench.training.evaluate import evaluate, evaluate_splits
from prunebench.training.loop import Callback, TrainState, train
from prunebench.training.schedule import build_optimizer, lr_factor

__all__ = ["Callback", "TrainState", "build_optimizer", "evaluate", "evaluate_splits", "lr_factor", "train"]
