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

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from prunebench.context import StudyContext
from prunebench.pruning import PruneContext, apply_mask
from prunebench.runs import Run, seeded
from prunebench.specs import PruneSpec
from prunebench.stages.base import (
    Stage,
    method_description,
    method_of,
    pretrained_run,
    target_meta,
    targets,
)
from prunebench.stages.sensitivity import read_rows, sensitivity_run

if TYPE_CHECKING:
    from prunebench.executor import Executor

log = logging.getLogger("prunebench")

ONE_SHOT = ("trained", "init")


def prune_run(ctx: StudyContext, entry, target: float, seed: int) -> Run:
    method = method_of(entry)
    parent = pretrained_run(ctx, entry, seed)
    desc = {"parent": parent.description, "scope": ctx.study.scope, **method_description(entry),
            ("channel_sparsity" if method.structured else "sparsity"): target}
    if method.needs_data:
        desc["calibration_batches"] = ctx.study.calibration_batches
    sens = None
    if method.uses_sensitivity:
        sens = sensitivity_run(ctx, entry, seed)
        desc["sensitivity"] = sens.description
    meta = {**parent.meta, "method": entry.method, "label": entry.label,
            **target_meta(method, target), "result": False}
    return Run(ctx.root, "prune", desc, meta, stage="prune", label=entry.label,
               spec=PruneSpec(seed=seed, entry=entry, target=target, trained=parent,
                              sensitivity=sens))


def one_shot(entry) -> bool:
    return method_of(entry).when in ONE_SHOT


class PruneStage(Stage):
    name = kind = "prune"
    help = "prune trained (or initial) weights in one shot"

    def runs(self, ctx: StudyContext) -> list[Run]:
        return [prune_run(ctx, entry, t, seed) for entry in ctx.study.methods if one_shot(entry)
                for seed in ctx.study.seeds for t in targets(ctx, entry)]

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
        if method.structured:
            rounds, round_epochs = method.pruning_rounds(spec.entry.options)
            per_round = 1.0 - (1.0 - spec.target) ** (1.0 / rounds)
            edits = []
            for r in range(rounds):
                if r:
                    recipe = dataclasses.replace(ex.study.finetune, epochs=round_epochs)
                    ex.train(run.path / f"round{r}", model, recipe, spec.seed)
                edits += method(ctx, per_round)
            arch = dataclasses.replace(arch, edits=(*arch.edits, *edits))
            log.info("removed %.0f%% of channels with %s in %d round(s)", 100 * spec.target,
                     spec.entry.method, rounds)
        else:
            mask = method(ctx, spec.target)
            apply_mask(model, mask)
            log.info("pruned with %s to %.4f", spec.entry.method, spec.target)
        ex.finish(run, model, arch, mask, {"prune_time_s": time.perf_counter() - start})


__all__ = ["PruneStage", "one_shot", "prune_run"]
