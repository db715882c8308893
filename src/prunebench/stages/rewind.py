"""Rewind: rewinding as a recovery (Frankle & Carbin 2019's one-shot experiment: prune once,
rewind, retrain), a third variant beside `finetune` and `distill` (`recover: [rewind]`).

A rewind run takes the mask of a pruned network, puts it on the weights the dense run of the
same seed had at iteration `rewind.iteration` (0: its initialisation, `init.pt`; k > 0: late
rewinding, Frankle et al. 2020, from a saved checkpoint or a deterministic replay, as a
lottery level rewinds) and trains it with the full `train` recipe (not the `finetune`
recipe) from that iteration to the end, the mask fixed. It is a lottery chain of one round:
at one target it gives the same mask and the same weights as a `lottery` level that prunes
the same way (`tests/test_rewind.py`).

Which methods are rewound, at every target of their grid:
- unstructured methods applied to trained weights (`when="trained"`): the parent is the
  one-shot pruning run;
- methods that prune during training (`when="during_training"`, gradual magnitude pruning):
  the parent is that training run, whose final mask is rewound to the dense run's weights
  (it started from the dense run's initialisation, so iteration 0 is its own start);
- not methods applied at initialisation (SNIP, GraSP, SynFlow): their `finetune` recovery
  already trains the mask from the dense run's initial weights with the full recipe, so a
  rewind run would repeat it;
- not structured methods: removing channels changes the architecture, so there are no
  initial weights of the pruned network to rewind to (Liu et al. 2019 retrain those from
  scratch instead); nor lottery chains (`when="iterative"`), which rewind at every level.

With `rewind.reinit_control`, each rewind run has a control: the same mask on a fresh random
initialisation, trained with the full recipe from iteration 0 (as a lottery ticket's). Both
have `recovery` "rewind"; the rewind run's `control` is "ticket" and the control's "reinit",
so the lottery table and figure show them pair by pair, beside any lottery chain.

A method's rewind runs stack like its fine-tuning (masked, one architecture, no teacher), and
its controls stack with each other; runs rewound to k > 0 train alone (the executor's stacked
training starts every member at iteration 0).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prunebench.budgets import Budget
from prunebench.context import StudyContext
from prunebench.data import num_batches
from prunebench.errors import ConfigError
from prunebench.pruning import apply_mask, load_mask
from prunebench.runs import Run
from prunebench.specs import PruneSpec, RewindReinitSpec, RewindSpec
from prunebench.stages.base import dense_run, method_of
from prunebench.stages.lottery import REINIT_SEED_OFFSET, rewind_weights
from prunebench.stages.prune import grid, prune_run
from prunebench.stages.recover import RecoverStage
from prunebench.stages.train import during_training_run

if TYPE_CHECKING:
    from prunebench.executor import Executor

log = logging.getLogger("prunebench")

REWIND = "rewind"
REWOUND = ("trained", "during_training")  # when the methods that are rewound prune


def rewound(entry) -> bool:
    """Whether `entry`'s masks get rewind runs: unstructured methods on trained weights or
    during training (see the module docstring for why the others get none)."""
    method = method_of(entry)
    return method.when in REWOUND and not method.structured


def masked_run(ctx: StudyContext, entry, target: float | None, seed: int,
               budget: Budget | None = None) -> Run:
    """The run whose mask a rewind run takes: the one-shot pruning run, or the training run
    of a method that prunes during training (at `target`, or at `budget`)."""
    if method_of(entry).when == "during_training":
        return during_training_run(ctx, entry, target, seed, budget)
    return prune_run(ctx, entry, target, seed, budget)


def rewind_run(ctx: StudyContext, entry, target: float | None, seed: int,
               budget: Budget | None = None) -> Run:
    """Named by its parent, the recovery and the train recipe (and the rewind iteration when
    not 0), as a fine-tuning run is by its parent, its recovery and its recipe."""
    pruned = masked_run(ctx, entry, target, seed, budget)
    iteration = ctx.study.rewind.iteration
    desc = {"parent": pruned.description, "recovery": REWIND, "train": ctx.study.train}
    if iteration:
        desc["iteration"] = iteration
    meta = {**pruned.meta, "recovery": REWIND, "control": RewindSpec.control, "result": True}
    return Run(ctx.root, "recover", desc, meta, stage=REWIND, label=entry.label,
               spec=RewindSpec(seed=seed, entry=entry, target=pruned.spec.target,
                               iteration=iteration, pruned=pruned, dense=dense_run(ctx, seed),
                               budget=budget))


def reinit_run(ctx: StudyContext, ticket: Run) -> Run:
    """The control of a rewind run: its mask, a fresh initialisation, the full recipe from
    iteration 0. Its name does not depend on the rewind iteration (nothing of it does)."""
    spec = ticket.spec
    assert isinstance(spec, RewindSpec), f"a control is of a rewind run, not {spec!r}"
    pruned = spec.pruned
    desc = {"parent": pruned.description, "recovery": REWIND, "train": ctx.study.train,
            "control": RewindReinitSpec.control}
    meta = {**ticket.meta, "control": RewindReinitSpec.control}
    return Run(ctx.root, "recover", desc, meta, stage=REWIND, label=ticket.label,
               spec=RewindReinitSpec(seed=spec.seed, entry=spec.entry, target=spec.target,
                                     pruned=pruned, budget=spec.budget))


def _started(ex: Executor, spec: RewindSpec | RewindReinitSpec):
    """A run's start: (model with the mask applied, mask, start iteration)."""
    mask_file = spec.pruned.path / "mask.pt"
    if not mask_file.is_file():
        raise RuntimeError(f"run {spec.pruned.path} has no mask.pt to rewind")
    mask = load_mask(mask_file)
    if isinstance(spec, RewindReinitSpec):
        model, start = ex.new_model(spec.seed + REINIT_SEED_OFFSET), 0
        log.info("random reinitialisation control of the mask of %s", spec.pruned.hash)
    else:
        start = spec.iteration
        recipe = ex.study.train
        total = recipe.epochs * num_batches(len(ex.data.train_y), recipe.batch_size)
        if start >= total:
            raise ConfigError(f"studies.{ex.study.name}.rewind.iteration must be below the "
                              f"train recipe's {total} iterations, got {start}")
        model = ex.model_from_state(rewind_weights(ex, spec.dense, spec.seed, start))
        log.info("mask of %s rewound to iteration %d of %s", spec.pruned.hash, start,
                 spec.dense.hash)
    apply_mask(model, mask)
    return model, mask, start


def _metrics(spec: RewindSpec | RewindReinitSpec, train_time_s: float) -> dict:
    """The training time, the iteration training started from (the rewind iteration; 0 for
    a control) and, for a one-shot parent, its numbers before retraining."""
    out = {"train_time_s": train_time_s,
           "start_iteration": spec.iteration if isinstance(spec, RewindSpec) else 0}
    parent = spec.pruned.metrics() if isinstance(spec.pruned.spec, PruneSpec) or spec.budget \
        else {}
    if isinstance(spec.pruned.spec, PruneSpec):
        out.update(prune_time_s=parent["prune_time_s"], oneshot_top1=parent["top1"],
                   oneshot_top5=parent["top5"])
    # what its mask's pruning found and achieved, for a budget point
    out.update({k: v for k, v in parent.items() if k.startswith("budget_")})
    return out


class RewindStage(RecoverStage):
    """The `rewind` recovery: its runs, their controls, how they stack and train."""

    def runs(self, ctx: StudyContext) -> list[Run]:
        if self.recovery not in ctx.study.recover:
            return []
        control = ctx.study.rewind.reinit_control
        runs = []
        for entry in ctx.study.methods:
            if not rewound(entry):
                continue
            for seed in ctx.study.seeds:
                for t, budget in grid(ctx, entry):
                    ticket = rewind_run(ctx, entry, t, seed, budget)
                    runs.append(ticket)
                    if control:
                        runs.append(reinit_run(ctx, ticket))
        return runs

    def stack_recipe(self, ctx: StudyContext, run: Run):
        """A method's rewind runs stack (masked, the unpruned architecture, the train recipe,
        no teacher), and so do its controls (never with the rewind runs: the stacking groups
        runs by control); runs rewound to k > 0 train alone."""
        spec = run.spec
        if isinstance(spec, RewindSpec) and spec.iteration:
            return None
        return run.description["train"]

    def execute(self, ex: Executor, run: Run) -> None:
        model, mask, start = _started(ex, run.spec)
        elapsed, _ = ex.train(run.path, model, run.description["train"], run.spec.seed, mask,
                              start_iteration=start)
        ex.finish(run, model, ex.dense_arch, mask, _metrics(run.spec, elapsed))

    def execute_stack(self, ex: Executor, runs: list[Run]) -> None:
        started = [_started(ex, run.spec) for run in runs]
        assert not any(start for _, _, start in started), "runs rewound to k > 0 train alone"
        share = ex.train_stack(runs, [m for m, _, _ in started], runs[0].description["train"],
                               [mask for _, mask, _ in started])
        for run, (model, mask, _) in zip(runs, started):
            ex.finish(run, model, ex.dense_arch, mask,
                      {**_metrics(run.spec, share), "stack_members": len(runs)})


REWIND_STAGE = RewindStage(REWIND, "retrain pruned networks' masks from the dense run's "
                                   "initial (or early) weights with the full train recipe")

__all__ = ["REWIND_STAGE", "RewindStage", "reinit_run", "rewind_run", "rewound"]
