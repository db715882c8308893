"""Prune: one shot on trained weights (or on the initial weights, for methods applied at
initialisation), one run per method x seed x target.

An unstructured method returns a mask, which is applied and saved. A structured method
removes whole channels from the model (Torch-Pruning does the surgery) and returns the edits;
they are appended to the run's architecture, so the smaller model can be rebuilt, fine-tuned,
distilled and measured like any other. A method that declares `rounds` prunes in that many
steps, each removing the same fraction of the remaining channels, with the declared epochs
of fine-tuning between steps (Li et al. 2017's iterative pruning).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from prunebench.context import StudyContext
from prunebench.pruning import PruneContext, apply_mask
from prunebench.runs import Run, seeded
from prunebench.specs import PruneSpec
from prunebench.budgets import Budget
from prunebench.stages.base import (
    Stage,
    budget_setting,
    budgets,
    method_description,
    method_of,
    pretrained_run,
    target_meta,
    targets,
)
from prunebench.stages.budget_search import budget_outcome, search_budget
from prunebench.stages.sensitivity import read_rows, sensitivity_run

if TYPE_CHECKING:
    from prunebench.executor import Executor

log = logging.getLogger("prunebench")

ONE_SHOT = ("trained", "init")


def prune_run(ctx: StudyContext, entry, target: float | None, seed: int,
              budget: Budget | None = None) -> Run:
    """The one-shot pruning run of `entry` at `target` (a weight or channel sparsity), or at
    `budget` (then `target` is ignored: the sparsity planning translates it into, or none
    where `execute` searches)."""
    method = method_of(entry)
    parent = pretrained_run(ctx, entry, seed)
    desc = {"parent": parent.description, "scope": ctx.study.scope, **method_description(entry)}
    if budget is not None:
        target = budget_setting(ctx, entry, budget)
        desc["budget"] = budget.describe()
    if target is not None:
        desc["channel_sparsity" if method.structured else "sparsity"] = target
    if method.needs_data:
        desc["calibration_batches"] = ctx.study.calibration_batches
    sens = None
    if method.uses_sensitivity:
        sens = sensitivity_run(ctx, entry, seed)
        desc["sensitivity"] = sens.description
    meta = {**parent.meta, "method": entry.method, "label": entry.label,
            **target_meta(method, target, budget), "result": False}
    return Run(ctx.root, "prune", desc, meta, stage="prune", label=entry.label,
               spec=PruneSpec(seed=seed, entry=entry, target=target, trained=parent,
                              sensitivity=sens, budget=budget))


def grid(ctx: StudyContext, entry) -> list[tuple[float | None, Budget | None]]:
    """A one-shot method's grid points: (target, None) for each of its sparsities, then
    (None, budget) for each budget it is asked for."""
    return ([(t, None) for t in targets(ctx, entry)]
            + [(None, b) for b in budgets(ctx, entry)])


def one_shot(entry) -> bool:
    return method_of(entry).when in ONE_SHOT


class PruneStage(Stage):
    name = kind = "prune"
    help = "prune trained (or initial) weights in one shot"

    def runs(self, ctx: StudyContext) -> list[Run]:
        return [prune_run(ctx, entry, t, seed, b) for entry in ctx.study.methods
                if one_shot(entry) for seed in ctx.study.seeds for t, b in grid(ctx, entry)]

    def execute(self, ex: Executor, run: Run) -> None:
        spec: PruneSpec = run.spec
        method = method_of(spec.entry)
        weights = "init.pt" if method.when == "init" else "model.pt"
        model, arch = ex.load(spec.trained, weights)
        start = time.perf_counter()
        ctx = PruneContext(
            model, ex.scope, spec.entry.options, seeded(spec.seed),
            batches=ex.calibration_batches(spec.seed) if method.needs_data else None,
            val_batches=ex.val_batches() if method.needs_data else None,
            input_shape=tuple(ex.data.input_shape),
            sensitivity=None if spec.sensitivity is None else read_rows(spec.sensitivity),
        )
        mask = None
        extra = {}
        target = spec.target
        timed = spec.budget is not None and spec.budget.kind == "latency"
        reference = copy.deepcopy(model) if timed else None  # what a speed-up is against
        if spec.budget is not None and target is None:
            found = search_budget(ex, spec, model, ctx, arch)
            target = found.setting
            extra = found.metrics(spec.budget)
            log.info("%s: %s at %s %.4f (achieved %.4f, %d probes)", spec.entry.label,
                     spec.budget.label(), "channel fraction" if method.structured else
                     "sparsity", target, found.achieved, len(found.probes))
        if method.structured:
            rounds, round_epochs = method.pruning_rounds(spec.entry.options)
            per_round = 1.0 - (1.0 - target) ** (1.0 / rounds)
            edits = []
            for r in range(rounds):
                if r:
                    recipe = dataclasses.replace(ex.study.finetune, epochs=round_epochs)
                    ex.train(run.path / f"round{r}", model, recipe, spec.seed)
                edits += method(ctx, per_round)
            arch = dataclasses.replace(arch, edits=(*arch.edits, *edits))
            log.info("removed %.0f%% of channels with %s in %d round(s)", 100 * target,
                     spec.entry.method, rounds)
        else:
            mask = method(ctx, target)
            apply_mask(model, mask)
            log.info("pruned with %s to %.4f", spec.entry.method, target)
        if spec.budget is not None:
            extra.setdefault("budget_setting", target)
            extra.update(budget_outcome(spec.budget, model, arch, ex, method.structured,
                                        reference))
        ex.finish(run, model, arch, mask, {"prune_time_s": time.perf_counter() - start,
                                           **extra})


__all__ = ["PruneStage", "grid", "one_shot", "prune_run"]
