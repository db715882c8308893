"""Recover: retrain a pruned network with its structure (mask or removed channels) fixed.

Two variants, each a stage of its own so that a study's `recover: [finetune, distill]`
multiplies the grid: `finetune` trains on the labels; `distill` trains on the labels and
the dense model of the same seed as teacher (Hinton et al. 2015; `studies.<s>.distill` sets
T and alpha). Methods applied to trained weights recover with the `finetune` recipe; methods
applied at initialisation train the sparse network with the full `train` recipe. Which
variant a run is, is its spec's `recovery` (and its `recovery` column), never its label.
A third variant, `rewind` (the mask retrained from the dense run's early weights with the
full recipe), is a `RecoverStage` of its own module, `prunebench.stages.rewind`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from prunebench.context import StudyContext
from prunebench.pruning import load_mask
from prunebench.runs import Run
from prunebench.specs import RecoverSpec, Recovery
from prunebench.stages.base import Stage, dense_run, method_of
from prunebench.stages.prune import grid, one_shot, prune_run
from prunebench.training.distill import DistillationLoss

if TYPE_CHECKING:
    from prunebench.executor import Executor

log = logging.getLogger("prunebench")


def recipe_for(ctx: StudyContext, entry):
    return ctx.study.train if method_of(entry).when == "init" else ctx.study.finetune


def recover_run(ctx: StudyContext, recovery: Recovery, entry, target: float | None, seed: int,
                budget=None) -> Run:
    pruned = prune_run(ctx, entry, target, seed, budget)
    desc = {"parent": pruned.description, "recovery": recovery, "train": recipe_for(ctx, entry)}
    teacher = None
    if recovery == "distill":
        teacher = dense_run(ctx, seed)
        desc.update(teacher=teacher.description, distill=ctx.study.distill)
    meta = {**pruned.meta, "recovery": recovery, "result": True}
    return Run(ctx.root, "recover", desc, meta, stage=recovery, label=entry.label,
               spec=RecoverSpec(seed=seed, entry=entry, target=pruned.spec.target,
                                recovery=recovery, pruned=pruned, teacher=teacher,
                                budget=budget))


class RecoverStage(Stage):
    kind = "recover"
    result = True

    def __init__(self, recovery: Recovery, help: str):
        self.name = self.recovery = recovery
        self.help = help

    def runs(self, ctx: StudyContext) -> list[Run]:
        if self.recovery not in ctx.study.recover:
            return []
        return [recover_run(ctx, self.recovery, entry, t, seed, b) for entry in ctx.study.methods
                if one_shot(entry) for seed in ctx.study.seeds for t, b in grid(ctx, entry)]

    def stack_recipe(self, ctx: StudyContext, run: Run):
        """Masked networks without a teacher stack (the unpruned architecture, one recipe);
        distillation (a teacher in the loss) and channel-pruned networks (each its own
        shapes) train alone."""
        spec: RecoverSpec = run.spec
        recipe = run.description["train"]
        if spec.teacher is not None or method_of(spec.entry).structured or not recipe.epochs:
            return None
        return recipe

    def execute(self, ex: Executor, run: Run) -> None:
        spec: RecoverSpec = run.spec
        model, arch, mask = _pruned(ex, spec)
        loss_fn = None
        if spec.teacher is not None:
            teacher, _ = ex.load(spec.teacher)
            cfg = ex.study.distill
            loss_fn = DistillationLoss(teacher, cfg.temperature, cfg.alpha)
            log.info("distilling from %s (T=%g, alpha=%g)", spec.teacher.hash,
                     cfg.temperature, cfg.alpha)
        elapsed, _ = ex.train(run.path, model, run.description["train"], spec.seed, mask,
                              loss_fn=loss_fn)
        ex.finish(run, model, arch, mask, _recover_metrics(spec, elapsed))

    def execute_stack(self, ex: Executor, runs: list[Run]) -> None:
        pruned = [_pruned(ex, run.spec) for run in runs]
        share = ex.train_stack(runs, [m for m, _, _ in pruned], runs[0].description["train"],
                               [mask for _, _, mask in pruned])
        for run, (model, arch, mask) in zip(runs, pruned):
            ex.finish(run, model, arch, mask, {**_recover_metrics(run.spec, share),
                                               "stack_members": len(runs)})


def _pruned(ex: Executor, spec: RecoverSpec):
    """The pruned network a run recovers: (model, arch, mask or None)."""
    model, arch = ex.load(spec.pruned)
    mask_file = Path(spec.pruned.path) / "mask.pt"
    return model, arch, load_mask(mask_file) if mask_file.is_file() else None


def _recover_metrics(spec: RecoverSpec, train_time_s: float) -> dict:
    oneshot = spec.pruned.metrics()
    return {"train_time_s": train_time_s, "prune_time_s": oneshot["prune_time_s"],
            "oneshot_top1": oneshot["top1"], "oneshot_top5": oneshot["top5"],
            # what the pruning found for a budget (the structure is fixed from then on)
            **{k: v for k, v in oneshot.items() if k.startswith("budget_")}}


FINETUNE = RecoverStage("finetune", "retrain pruned networks on the labels")
DISTILL = RecoverStage("distill", "retrain pruned networks by knowledge distillation from "
                                  "the dense model of the same seed")

__all__ = ["DISTILL", "FINETUNE", "RecoverStage", "recover_run"]
