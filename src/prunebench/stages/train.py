"""Train: the dense baseline of every seed, each method's own pretraining (network
slimming's L1 penalty on BatchNorm scales), and methods that prune during training (gradual
magnitude pruning), which train the dense run's initialisation with the full recipe."""

from __future__ import annotations

import dataclasses
import logging

from prunebench.data import num_batches
from prunebench.io import atomic_torch_save, atomic_write_json
from prunebench.pruning.gradual import GradualPruning, resolve_schedule
from prunebench.runs import Run, Workspace, seeded
from prunebench.stages.base import (
    DENSE,
    Stage,
    dense_run,
    method_description,
    method_of,
    pretrained_run,
    target_meta,
    targets,
)

log = logging.getLogger("prunebench")


def _initialised(ws: Workspace, run: Run):
    """The run's freshly initialised model, saved as init.pt (what rewinding and methods
    applied at initialisation start from)."""
    model = ws.new_model(run.spec["seed"])
    atomic_torch_save(model.state_dict(), run.path / "init.pt")
    return model


def during_training_run(ws: Workspace, entry, sparsity: float, seed: int) -> Run:
    parent = dense_run(ws, seed)
    desc = {**parent.description, "scope": ws.study.scope, **method_description(entry),
            "sparsity": sparsity}
    meta = {**parent.meta, "method": entry.method, "label": entry.label,
            **target_meta(method_of(entry), sparsity)}
    return Run(ws.root, "train", desc, meta, stage="train", label=entry.label, parents=(parent,),
               spec={"seed": seed, "entry": entry, "sparsity": sparsity})


class TrainStage(Stage):
    name = kind = "train"
    help = "train the dense models, pretraining runs and during-training pruning"
    result = True
    default_label = DENSE

    def runs(self, ws: Workspace) -> list[Run]:
        seeds = ws.study.seeds
        runs = [dense_run(ws, seed) for seed in seeds]
        for entry in ws.study.methods:
            method = method_of(entry)
            if method.pretrain is not None:
                runs += [pretrained_run(ws, entry, seed) for seed in seeds]
            if method.when == "during_training":
                runs += [during_training_run(ws, entry, s, seed)
                         for seed in seeds for s in targets(ws, entry)]
        return runs

    def stack_recipe(self, ws: Workspace, run: Run):
        """Dense and pretraining runs stack (seeds apart, each with its own data order);
        pruning during training changes masks mid-run and trains alone."""
        return None if "sparsity" in run.spec else run.description["train"]

    def execute(self, ws: Workspace, run: Run) -> None:
        seed = run.spec["seed"]
        if "sparsity" in run.spec:
            return self._during_training(ws, run)
        log.info("dense training %s (seed %d)", run.hash, seed)
        model = _initialised(ws, run)
        recipe = run.description["train"]
        elapsed, _ = ws.train(run.path, model, recipe, seed)
        ws.finish(run, model, ws.dense_arch, None, {"train_time_s": elapsed})

    def execute_stack(self, ws: Workspace, runs: list[Run]) -> None:
        models = [_initialised(ws, run) for run in runs]
        share = ws.train_stack(runs, models, runs[0].description["train"], [None] * len(runs))
        for run, model in zip(runs, models):
            ws.finish(run, model, ws.dense_arch, None,
                      {"train_time_s": share, "stack_members": len(runs)})

    def _during_training(self, ws: Workspace, run: Run) -> None:
        """Train the dense run's initialisation with the full recipe while a callback prunes
        on the method's schedule; `schedule.json` lists the pruning steps and history.csv
        the weight sparsity after every epoch."""
        entry, sparsity, seed = run.spec["entry"], run.spec["sparsity"], run.spec["seed"]
        recipe = ws.study.train
        schedule = resolve_schedule(entry.options, sparsity,
                                    num_batches(len(ws.data.train_y), recipe.batch_size),
                                    recipe.epochs)
        atomic_write_json(run.path / "schedule.json",
                          {**dataclasses.asdict(schedule), "steps": schedule.steps()})
        model, arch = ws.load(run.parents[0], "init.pt")
        pruner = GradualPruning(method_of(entry), entry.options, ws.scope, schedule, seeded(seed))
        log.info("training with %s to %.4f: pruning at iterations %d..%d", entry.method,
                 sparsity, schedule.start_iteration, schedule.end_iteration)
        elapsed, state = ws.train(run.path, model, recipe, seed, pruner.initial_mask(model),
                                  callbacks=[pruner])
        ws.finish(run, model, arch, state.mask, {"train_time_s": elapsed})


__all__ = ["TrainStage"]
