"""Gradual magnitude pruning inside one training run (Zhu & Gupta 2017).

Training starts dense from the initialisation and the sparsity rises on a schedule while the
network trains, reaching the target at `end_epoch` and staying there until training ends:

    cubic:  s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))**3      (Zhu & Gupta)
    linear: s_t = s_i + (s_f - s_i) * (t - t0) / (t1 - t0)

for t0 <= t <= t1, s_i before t0 and s_f after t1 (t counts optimizer iterations). Pruning
happens every `frequency` iterations from t0, plus once at t1 (so a last, shorter interval
when t1 - t0 is not a multiple of it). Each step keeps the largest-magnitude weights among
the ones still active; pruned weights never come back (`ctx.mask` is respected), so every
mask is a subset of the previous one, and the exact count of the top-k helpers makes the
last step land exactly on the target.

The options (schedule, scope, start_epoch, end_epoch, frequency, initial_sparsity) are
declared with the method below. The method function is one pruning step (to `sparsity`,
given `ctx.mask`); `GradualPruning` is the training-loop callback that calls it on the
schedule; the method's `training_callback` hook builds it, and the train stage trains the
dense run's initialisation with the full `train` recipe and this callback.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunebench.errors import ConfigError
from prunebench.options import Option, choice, fraction, positive_int
from prunebench.pruning.base import (
    METHODS,
    CallbackContext,
    PruneContext,
    PruningMethod,
    register_method,
)
from prunebench.pruning.magnitude import magnitude_scores
from prunebench.pruning.mask import Mask, global_topk_mask, layerwise_topk_mask, ones_mask
from prunebench.pruning.scope import Scope

if TYPE_CHECKING:
    from prunebench.training.loop import TrainState

SCHEDULES = ("cubic", "linear")
SCOPES = ("global", "layer")
DEFAULT_START_FRACTION = 0.1  # of the training run, when start_epoch is null
DEFAULT_END_FRACTION = 0.75  # leaves a quarter of the run to recover at the final sparsity


def check_options(opts: Mapping[str, Any], key: str) -> None:
    start, end = opts["start_epoch"], opts["end_epoch"]
    if start is not None and end is not None and start > end:
        raise ConfigError(f"{key}.start_epoch must be <= {key}.end_epoch, got {start!r} > {end!r}")


def _epochs(default_fraction: float, what: str) -> Option:
    return Option(None, float, f"{what}, in epochs (fractions allowed); null = "
                  f"{default_fraction:g} of training", low=0.0, nullable=True)


def scheduled_sparsity(
    iteration: int, final_sparsity: float, start_iteration: int, end_iteration: int,
    initial_sparsity: float = 0.0, schedule: str = "cubic",
) -> float:
    """The target sparsity at `iteration` (before t0: initial; from t1 on: final)."""
    if iteration < start_iteration:
        return initial_sparsity
    if iteration >= end_iteration:
        return final_sparsity
    progress = (iteration - start_iteration) / (end_iteration - start_iteration)
    if schedule == "cubic":
        return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** 3
    if schedule == "linear":
        return initial_sparsity + (final_sparsity - initial_sparsity) * progress
    raise ConfigError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class GradualSchedule:
    """A schedule resolved to iterations of one training run."""

    final_sparsity: float
    initial_sparsity: float
    start_iteration: int
    end_iteration: int
    frequency: int
    schedule: str

    def sparsity_at(self, iteration: int) -> float:
        return scheduled_sparsity(iteration, self.final_sparsity, self.start_iteration,
                                  self.end_iteration, self.initial_sparsity, self.schedule)

    def pruning_iterations(self) -> list[int]:
        """The iterations after which a pruning step runs: t0, t0 + frequency, ..., t1."""
        t0, t1 = self.start_iteration, self.end_iteration
        return [*range(t0, t1, self.frequency), t1]

    def steps(self) -> list[dict[str, float]]:
        """Every pruning step with its target sparsity (what `schedule.json` records)."""
        return [{"iteration": t, "weight_sparsity": self.sparsity_at(t)}
                for t in self.pruning_iterations()]


def _epoch_to_iteration(epoch: float, steps_per_epoch: int) -> int:
    return int(math.floor(epoch * steps_per_epoch + 0.5))


def resolve_schedule(
    options: Mapping[str, Any], final_sparsity: float, steps_per_epoch: int, epochs: int,
    key: str = "methods.gradual_magnitude",
) -> GradualSchedule:
    """Epoch-valued options to iterations of a run of `epochs` x `steps_per_epoch`."""
    opts = METHODS.get("gradual_magnitude").resolve_options(options)
    if epochs < 1:
        raise ConfigError("gradual pruning needs a training run: train.epochs must be >= 1")
    start, end = opts["start_epoch"], opts["end_epoch"]
    start = DEFAULT_START_FRACTION * epochs if start is None else start
    end = DEFAULT_END_FRACTION * epochs if end is None else end
    if end > epochs:
        raise ConfigError(
            f"{key}.end_epoch ({end}) is past the end of training (train.epochs = {epochs})")
    if start > end:
        raise ConfigError(f"{key}.start_epoch ({start}) must be <= end_epoch ({end}, null = "
                          f"{DEFAULT_END_FRACTION:g} of train.epochs)")
    if opts["initial_sparsity"] > final_sparsity:
        raise ConfigError(f"{key}.initial_sparsity ({opts['initial_sparsity']}) is above the "
                          f"target sparsity {final_sparsity}")
    return GradualSchedule(
        final_sparsity=final_sparsity,
        initial_sparsity=float(opts["initial_sparsity"]),
        start_iteration=_epoch_to_iteration(start, steps_per_epoch),
        end_iteration=_epoch_to_iteration(end, steps_per_epoch),
        frequency=opts["frequency"] or steps_per_epoch,
        schedule=opts["schedule"],
    )


def check_grid(options: Mapping[str, Any], recipe, targets, key: str) -> None:
    """Every target's schedule must fit the study's training run (checked at parse time)."""
    for target in targets:
        resolve_schedule(options, target, 1, recipe.epochs, key)


def training_callback(ctx: CallbackContext) -> GradualPruning:
    """The method's `training_callback` hook: the callback that prunes on the schedule the
    options give for a run of `ctx.epochs` x `ctx.steps_per_epoch` to `ctx.target`."""
    schedule = resolve_schedule(ctx.options, ctx.target, ctx.steps_per_epoch, ctx.epochs)
    return GradualPruning(METHODS.get("gradual_magnitude"), ctx.options, ctx.scope, schedule,
                          ctx.generator)


@register_method("gradual_magnitude", when="during_training", validate=check_options,
                 check_grid=check_grid, training_callback=training_callback, options={
    "schedule": choice("cubic", SCHEDULES, "how the sparsity rises from start to end"),
    "scope": choice("global", SCOPES, "global: one magnitude threshold across the prunable "
                    "layers; layer: the same sparsity in every layer"),
    "start_epoch": _epochs(DEFAULT_START_FRACTION, "the first pruning step"),
    "end_epoch": _epochs(DEFAULT_END_FRACTION, "the step that reaches the target sparsity"),
    "frequency": positive_int(None, "iterations between pruning steps; null = once per epoch",
                              nullable=True),
    "initial_sparsity": fraction(0.0, "the sparsity of the first step (0 = start dense)"),
})
def gradual_magnitude(ctx: PruneContext, sparsity: float) -> Mask:
    """One step: the largest-magnitude active weights survive so that `sparsity` is reached."""
    opts = METHODS.get("gradual_magnitude").resolve_options(ctx.options)
    select = global_topk_mask if opts["scope"] == "global" else layerwise_topk_mask
    return select(magnitude_scores(ctx), sparsity, ctx.mask)


class GradualPruning:
    """Training-loop callback: after each scheduled iteration, prune to the scheduled sparsity.

    `state.set_mask` zeroes the newly pruned weights and their optimizer state, so the mask is
    in force before the next forward pass; the loop keeps it on gradients and after each step.
    The schedule depends on the iteration alone, so a run resumed from a checkpoint (which
    holds the mask) continues exactly.
    """

    def __init__(self, method: PruningMethod, options: Mapping[str, Any], scope: Scope,
                 schedule: GradualSchedule, generator: torch.Generator):
        self.method = method
        self.options = options
        self.scope = scope
        self.schedule = schedule
        self.generator = generator
        self._iterations = set(schedule.pruning_iterations())

    def artifacts(self) -> dict[str, Any]:
        """`schedule.json`: the resolved schedule and every pruning step (iteration, sparsity)."""
        return {"schedule.json": {**dataclasses.asdict(self.schedule),
                                  "steps": self.schedule.steps()}}

    def prune(self, model: nn.Module, mask: Mask | None, sparsity: float) -> Mask:
        ctx = PruneContext(model, self.scope, self.options, self.generator, mask=mask)
        return self.method(ctx, sparsity)

    def initial_mask(self, model: nn.Module) -> Mask:
        """The mask to start training with: dense, unless the schedule prunes at iteration 0."""
        sparsity = self.schedule.sparsity_at(0)
        if 0 in self._iterations and sparsity > 0:
            return self.prune(model, None, sparsity)
        return ones_mask(self.scope.params(model))

    def on_step_end(self, state: TrainState) -> None:
        if state.iteration in self._iterations:
            sparsity = self.schedule.sparsity_at(state.iteration)
            state.set_mask(self.prune(state.model, state.mask, sparsity))
