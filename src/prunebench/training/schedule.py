"""The optimiser and the per-iteration learning-rate schedule of a recipe.

The schedule is a pure function of the iteration number, so a resumed run needs no
scheduler state: it recomputes the learning rate from the iteration it restarts at.

Optimiser steps use the implementation the recipe's `optimizer_impl` names, by default
torch's fused kernels (one per parameter for the whole update) rather than torch's own CPU
default, its per-parameter loop of small ops: fused was the fastest of the three on the
2-core development CPU (`benchmarks/train_throughput.py`, `optimizer_impls`). Each
implementation rounds differently, so runs made with the per-parameter loop (before fused
became the default) end at slightly different weights; a fixed seed still gives
bit-identical runs with any one of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from prunebench.config import TrainConfig

# torch's three implementations of an optimiser step, by the recipe's `optimizer_impl`:
# fused kernels (one per parameter for the whole update; the fastest on CPU and CUDA,
# benchmarks/train_throughput.py), foreach (multi-tensor) ops, or the per-parameter loop.
# Each rounds differently, so the choice is part of every run's name (it is a recipe field).
OPTIMIZER_IMPLEMENTATION = {
    "fused": {"fused": True, "foreach": False},
    "foreach": {"fused": False, "foreach": True},
    "forloop": {"fused": False, "foreach": False},
}


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimiser (SGD, with momentum and Nesterov when set, or Adam) over
    `params`, run by the implementation the recipe's `optimizer_impl` names."""
    params = list(params)
    implementation = OPTIMIZER_IMPLEMENTATION[cfg.optimizer_impl]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay, **implementation,
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                **implementation)
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
