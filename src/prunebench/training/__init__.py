"""Training and evaluation."""

from prunebench.training.evaluate import evaluate, evaluate_splits
from prunebench.training.loop import Callback, TrainState, train
from prunebench.training.schedule import lr_factor, make_optimizer
from prunebench.training.stacked import (
    NotStackable,
    can_stack,
    stack_refusal,
    stack_size,
    train_stacked,
)

__all__ = ["Callback", "NotStackable", "TrainState", "can_stack", "evaluate", "evaluate_splits",
           "lr_factor", "make_optimizer", "stack_refusal", "stack_size", "train",
           "train_stacked"]
