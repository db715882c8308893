"""Train: the dense baseline of every seed, each method's own pretraining (its `pretrain`
hook: network slimming's L1 penalty on BatchNorm scales), and methods that prune during
training (their `training_callback` hook: gradual magnitude pruning), which train the dense
run's initialisation with the full recipe."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prunebench.budgets import Budget
from prunebench.context import StudyContext
from prunebench.data import num_batches
from prunebench.io import atomic_write_json
from prunebench.pruning.base import CallbackContext
from prunebench.runs import Run, seeded
from prunebench.specs import DenseSpec, DuringTrainingSpec, PretrainSpec
from prunebench.stages.base import (
    DENSE,
    Stage,
    dense_run,
    method_description,
    method_of,
    pretrained_run,
    budget_setting,
    budgets,
    target_meta,
    targets,
)
from prunebench.stages.budget_search import budget_metrics

if TYPE_CHECKING:
    from prunebench.executor import Executor

log = logging.getLogger("prunebench")


def during_training_run(ctx: StudyContext, entry, sparsity: float | None, seed: int,
                        budget: Budget | None = None) -> Run:
    """Training with the method's callback to `sparsity`, or to the sparsity that meets
    `budget` exactly (`params`, `compression`: the only budgets such a method is asked for)."""
    parent = dense_run(ctx, seed)
    extra = {}
    if budget is not None:
        sparsity = budget_setting(ctx, entry, budget)
        extra["budget"] = budget.describe()
    desc = {**parent.description, "scope": ctx.study.scope, **method_description(entry),
            "sparsity": sparsity, **extra}
    meta = {**parent.meta, "method": entry.method, "label": entry.label,
            **target_meta(method_of(entry), sparsity, budget)}
    return Run(ctx.root, "train", desc, meta, stage="train", label=entry.label,
               spec=DuringTrainingSpec(seed=seed, entry=entry, target=sparsity, init=parent,
                                       budget=budget))


def _start(ex: Executor) -> dict[str, str]:
    """What a dense run started from, when not a fresh initialisation: `pretrained` names the
    checkpoint's SHA-256 (a column of runs.csv, so the dense row says it was loaded)."""
    checkpoint = ex.study.model.checkpoint
    return {} if checkpoint is None else {"pretrained": checkpoint.sha256}


class TrainStage(Stage):
    name = kind = "train"
    help = "train the dense models, pretraining runs and during-training pruning"
    result = True
    default_label = DENSE

    def runs(self, ctx: StudyContext) -> list[Run]:
        seeds = ctx.study.seeds
        runs = [dense_run(ctx, seed) for seed in seeds]
        for entry in ctx.study.methods:
            method = method_of(entry)
            if method.pretrain is not None:
                runs += [pretrained_run(ctx, entry, seed) for seed in seeds]
            if method.when == "during_training":
                runs += [during_training_run(ctx, entry, s, seed)
                         for seed in seeds for s in targets(ctx, entry)]
                runs += [during_training_run(ctx, entry, None, seed, b)
                         for seed in seeds for b in budgets(ctx, entry)]
        return runs

    def stack_recipe(self, ctx: StudyContext, run: Run):
        """Dense and pretraining runs stack (seeds apart, each with its own data order);
        pruning during training changes masks mid-run and trains alone."""
        recipe = run.description["train"]
        if isinstance(run.spec, DuringTrainingSpec) or not recipe.epochs:
            return None
        return recipe

    def execute(self, ex: Executor, run: Run) -> None:
        spec = run.spec
        if isinstance(spec, DuringTrainingSpec):
            return self._during_training(ex, run, spec)
        assert isinstance(spec, (DenseSpec, PretrainSpec)), spec
        log.info("dense training %s (seed %d)", run.hash, spec.seed)
        model = ex.initialised(run, spec.seed)
        elapsed, _ = ex.train(run.path, model, run.description["train"], spec.seed)
        ex.finish(run, model, ex.dense_arch, None, {"train_time_s": elapsed, **_start(ex)})

    def execute_stack(self, ex: Executor, runs: list[Run]) -> None:
        models = [ex.initialised(run, run.spec.seed) for run in runs]
        share = ex.train_stack(runs, models, runs[0].description["train"], [None] * len(runs))
        for run, model in zip(runs, models):
            ex.finish(run, model, ex.dense_arch, None,
                      {"train_time_s": share, "stack_members": len(runs), **_start(ex)})

    @staticmethod
    def _during_training(ex: Executor, run: Run, spec: DuringTrainingSpec) -> None:
        """Train the dense run's initialisation with the full recipe and the method's
        training callback; the callback's own files (gradual pruning's `schedule.json`) are
        written first, and history.csv has the weight sparsity after every epoch."""
        recipe = ex.study.train
        callback = method_of(spec.entry).training_callback(CallbackContext(
            options=spec.entry.options, target=spec.target, scope=ex.scope,
            steps_per_epoch=num_batches(len(ex.data.train_y), recipe.batch_size),
            epochs=recipe.epochs, generator=seeded(spec.seed)))
        for name, content in callback.artifacts().items():
            atomic_write_json(run.path / name, content)
        model, arch = ex.load(spec.init, "init.pt")
        log.info("training with %s to %.4f", spec.entry.method, spec.target)
        elapsed, state = ex.train(run.path, model, recipe, spec.seed,
                                  callback.initial_mask(model), callbacks=[callback])
        ex.finish(run, model, arch, state.mask, {"train_time_s": elapsed,
                                                 **budget_metrics(spec, model, arch, ex)})


__all__ = ["TrainStage", "during_training_run"]
