"""Optimisers and per-iteration learning-rate schedules.

The schedule is a pure function of the iteration number, so a resumed run needs no
scheduler state: it recomputes the learning rate from the iteration it restarts at.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from prunebench.config import TrainConfig


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def lr_factor(cfg: TrainConfig, iteration: int, steps_per_epoch: int) -> float:
    """Multiplier on cfg.lr for the step that runs at `iteration` (0-based)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if iteration < warmup:
        return (iteration + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        epoch = iteration / steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    progress = (iteration - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
