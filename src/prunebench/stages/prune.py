"""Prune: one shot on trained weights (or on the initial weights, for methods applied at
initialisation), one run per method x seed x target.

An unstructured method returns a mask, which is applied and saved. A structured method
removes whole channels from the model (Torch-Pruning does the surgery) and returns the edits;
they are appended to the run's architecture, so the smaller model can be rebuilt, fine-tuned,
distilled and measured like any other. With `rounds: n` a structured method prunes in n
steps, each removing the same fraction of the remaining channels, with `round_epochs` of
fine-tuning between steps (Li et al. 2017's iterative pruning).
"""

from __future__ import annotations

import dataclasses
import logging
import time

from prunebench.pruning import PruneContext, apply_mask
from prunebench.runs import Run, Workspace, seeded
from prunebench.stages.base import (
    Stage,
    method_description,
    method_of,
    pretrained_run,
    target_meta,
    targets,
)
from prunebench.stages.sensitivity import read_rows, sensitivity_run

log = logging.getLogger("prunebench")

ONE_SHOT = ("trained", "init")


def prune_run(ws: Workspace, entry, target: float, seed: int) -> Run:
    method = method_of(entry)
    parent = pretrained_run(ws, entry, seed)
    parents = [parent]
    desc = {"parent": parent.description, "scope": ws.study.scope, **method_description(entry),
            ("channel_sparsity" if method.structured else "sparsity"): target}
    if method.needs_data:
        desc["calibration_batches"] = ws.study.calibration_batches
    if method.uses_sensitivity:
        sens = sensitivity_run(ws, entry, seed)
        desc["sensitivity"] = sens.description
        parents.append(sens)
    meta = {**parent.meta, "method": entry.method, "label": entry.label,
            **target_meta(method, target), "result": False}
    return Run(ws.root, "prune", desc, meta, stage="prune", label=entry.label,
               parents=tuple(parents), spec={"seed": seed, "entry": entry, "target": target})


def one_shot(entry) -> bool:
    return method_of(entry).when in ONE_SHOT


class PruneStage(Stage):
    name = kind = "prune"
    help = "prune trained (or initial) weights in one shot"

    def runs(self, ws: Workspace) -> list[Run]:
        return [prune_run(ws, entry, t, seed) for entry in ws.study.methods if one_shot(entry)
                for seed in ws.study.seeds for t in targets(ws, entry)]

    def execute(self, ws: Workspace, run: Run) -> None:
        entry, target, seed = run.spec["entry"], run.spec["target"], run.spec["seed"]
        method = method_of(entry)
        weights = "init.pt" if method.when == "init" else "model.pt"
        model, arch = ws.load(run.parents[0], weights)
        start = time.perf_counter()
        ctx = PruneContext(
            model, ws.scope, entry.options, seeded(seed),
            batches=ws.calibration_batches(seed) if method.needs_data else None,
            val_batches=ws.val_batches() if method.needs_data else None,
            input_shape=tuple(ws.data.input_shape),
            sensitivity=read_rows(run.parents[1]) if method.uses_sensitivity else None,
        )
        mask = None
        if method.structured:
            rounds = entry.options.get("rounds", 1)
            per_round = 1.0 - (1.0 - target) ** (1.0 / rounds)
            edits = []
            for r in range(rounds):
                if r:
                    self._between_rounds(ws, run, model, entry, seed, r)
                edits += method(ctx, per_round)
            arch = dataclasses.replace(arch, edits=(*arch.edits, *edits))
            log.info("removed %.0f%% of channels with %s in %d round(s)", 100 * target,
                     entry.method, rounds)
        else:
            mask = method(ctx, target)
            apply_mask(model, mask)
            log.info("pruned with %s to %.4f", entry.method, target)
        ws.finish(run, model, arch, mask, {"prune_time_s": time.perf_counter() - start})

    @staticmethod
    def _between_rounds(ws: Workspace, run: Run, model, entry, seed: int, r: int) -> None:
        recipe = dataclasses.replace(ws.study.finetune, epochs=entry.options["round_epochs"])
        ws.train(run.path / f"round{r}", model, recipe, seed)
