"""Recover: retrain a pruned network with its structure (mask or removed channels) fixed.

Two variants, each a stage of its own so that a study's `recover: [finetune, distill]`
multiplies the grid: `finetune` trains on the labels; `distill` trains on the labels and
the dense model of the same seed as teacher (Hinton et al. 2015; `studies.<s>.distill` sets
T and alpha). Methods applied to trained weights recover with the `finetune` recipe; methods
applied at initialisation train the sparse network with the full `train` recipe.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prunebench.pruning import load_mask
from prunebench.runs import Run, Workspace
from prunebench.stages.base import Stage, dense_run, method_of, targets
from prunebench.stages.prune import one_shot, prune_run
from prunebench.training.distill import DistillationLoss

log = logging.getLogger("prunebench")


def recipe_for(ws: Workspace, entry):
    return ws.study.train if method_of(entry).when == "init" else ws.study.finetune


def recover_run(ws: Workspace, variant: str, entry, target: float, seed: int) -> Run:
    parent = prune_run(ws, entry, target, seed)
    desc = {"parent": parent.description, "recovery": variant, "train": recipe_for(ws, entry)}
    parents = [parent]
    label = entry.label
    if variant == "distill":
        teacher = dense_run(ws, seed)
        desc.update(teacher=teacher.description, distill=ws.study.distill)
        parents.append(teacher)
        label = f"{entry.label}+distill"
    meta = {**parent.meta, "label": label, "recovery": variant, "result": True}
    return Run(ws.root, "recover", desc, meta, stage=variant, label=entry.label,
               parents=tuple(parents), spec={"seed": seed, "entry": entry})


class RecoverStage(Stage):
    kind = "recover"
    result = True

    def __init__(self, variant: str, help: str):
        self.name = variant
        self.help = help

    def runs(self, ws: Workspace) -> list[Run]:
        if self.name not in ws.study.recover:
            return []
        return [recover_run(ws, self.name, entry, t, seed) for entry in ws.study.methods
                if one_shot(entry) for seed in ws.study.seeds for t in targets(ws, entry)]

    def stack_recipe(self, ws: Workspace, run: Run):
        """Fine-tuning of masked networks stacks (the unpruned architecture, one recipe);
        distillation (a teacher in the loss) and channel-pruned networks (each its own
        shapes) train alone."""
        recipe = run.description["train"]
        if self.name != "finetune" or method_of(run.spec["entry"]).structured or not recipe.epochs:
            return None
        return recipe

    def execute(self, ws: Workspace, run: Run) -> None:
        model, arch, mask = _pruned(ws, run)
        loss_fn = None
        if self.name == "distill":
            teacher, _ = ws.load(run.parents[1])
            cfg = ws.study.distill
            loss_fn = DistillationLoss(teacher, cfg.temperature, cfg.alpha)
            log.info("distilling from %s (T=%g, alpha=%g)", run.parents[1].hash,
                     cfg.temperature, cfg.alpha)
        recipe = run.description["train"]
        elapsed, _ = ws.train(run.path, model, recipe, run.spec["seed"], mask, loss_fn=loss_fn)
        ws.finish(run, model, arch, mask, _recover_metrics(run, elapsed))

    def execute_stack(self, ws: Workspace, runs: list[Run]) -> None:
        pruned = [_pruned(ws, run) for run in runs]
        share = ws.train_stack(runs, [m for m, _, _ in pruned], runs[0].description["train"],
                               [mask for _, _, mask in pruned])
        for run, (model, arch, mask) in zip(runs, pruned):
            ws.finish(run, model, arch, mask, {**_recover_metrics(run, share),
                                               "stack_members": len(runs)})


def _pruned(ws: Workspace, run: Run):
    """The pruned network `run` recovers: (model, arch, mask or None)."""
    pruned = run.parents[0]
    model, arch = ws.load(pruned)
    mask_file = Path(pruned.path) / "mask.pt"
    return model, arch, load_mask(mask_file) if mask_file.is_file() else None


def _recover_metrics(run: Run, train_time_s: float) -> dict:
    oneshot = run.parents[0].metrics()
    return {"train_time_s": train_time_s, "prune_time_s": oneshot["prune_time_s"],
            "oneshot_top1": oneshot["top1"], "oneshot_top5": oneshot["top5"]}


FINETUNE = RecoverStage("finetune", "retrain pruned networks on the labels")
DISTILL = RecoverStage("distill", "retrain pruned networks by knowledge distillation from "
                                  "the dense model of the same seed")

__all__ = ["DISTILL", "FINETUNE", "RecoverStage"]
