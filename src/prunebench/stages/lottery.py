"""Lottery: iterative pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020),
one chain per method x seed x target, for every method with `iterative` hooks.

Each level is a run whose parent is the previous level (the first level's is the dense
run): it prunes the previous level's trained weights, rewinds the survivors to their values
at the method's rewind iteration of the dense run, and retrains. Levels are sequential by
nature; a finished level is reused by every longer chain. A method whose hooks ask for a
control also trains the final mask from a fresh random initialisation, the control that
shows the initialisation matters. The method decides the levels, the rewind point and the
control (`prunebench.pruning.base.Iterative`); this stage reads none of its options.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from prunebench.context import StudyContext
from prunebench.io import atomic_torch_save, load_tensors
from prunebench.pruning import PruneContext, apply_mask, load_mask
from prunebench.runs import Run, seeded
from prunebench.specs import LevelSpec, ReinitSpec
from prunebench.budgets import Budget
from prunebench.stages.base import (
    Stage,
    budget_setting,
    budgets,
    dense_run,
    method_description,
    method_of,
    target_meta,
    targets,
)
from prunebench.stages.budget_search import budget_metrics

if TYPE_CHECKING:
    from prunebench.executor import Executor

log = logging.getLogger("prunebench")

REINIT_SEED_OFFSET = 1_000_000  # fresh initialisation for the lottery-ticket control


def shared_levels(schedule: list[float], targets) -> list[float]:
    """`schedule` with every level that is one of `targets` up to float rounding replaced by
    that target, so the chains of a study share the levels its targets name: with 20 % per
    round, the chain to 0.488 passes through 1 - 0.8 * 0.8 = 0.3599999999999999, which is
    the level a target of 0.36 names, and is then trained once, not twice."""
    return [next((t for t in targets if abs(t - level) <= 1e-9), level) for level in schedule]


def level_schedule(ctx: StudyContext, entry, target: float) -> list[float]:
    """The sparsity of every level of a chain to `target`, as the method's hooks say."""
    hooks = method_of(entry).iterative
    return hooks.levels(entry.options, ctx.dense_arch.build, ctx.scope, target)


def level_run(ctx: StudyContext, entry, schedule: list[float], seed: int,
              budget: Budget | None = None) -> Run:
    """The last level of the chain `schedule`; a chain to a `budget` (its last level at the
    sparsity that meets it exactly) names the budget in that level, its own run, while the
    levels before it are the ones every chain of the method shares."""
    dense = dense_run(ctx, seed)
    previous = level_run(ctx, entry, schedule[:-1], seed) if len(schedule) > 1 else dense
    desc = {"parent": dense.description, "scope": ctx.study.scope, **method_description(entry),
            "levels": list(schedule)}
    meta = {**dense.meta, "method": entry.method, "label": entry.label,
            "target_sparsity": schedule[-1], "level": len(schedule),
            "control": LevelSpec.control}
    if budget is not None:
        desc["budget"] = budget.describe()
        meta.update(target_meta(method_of(entry), schedule[-1], budget))
    return Run(ctx.root, "lottery", desc, meta, stage="lottery", label=entry.label,
               spec=LevelSpec(seed=seed, entry=entry, target=schedule[-1], level=len(schedule),
                              previous=previous, dense=dense, budget=budget))


def reinit_run(ctx: StudyContext, ticket: Run) -> Run:
    spec = ticket.spec
    assert isinstance(spec, LevelSpec), f"a control is of a lottery ticket, not {spec!r}"
    meta = {**ticket.meta, "control": ReinitSpec.control}
    return Run(ctx.root, "lottery_reinit", {"level": ticket.description}, meta, stage="lottery",
               label=ticket.label,
               spec=ReinitSpec(seed=spec.seed, entry=spec.entry, target=spec.target,
                               ticket=ticket, budget=spec.budget))


def rewind_weights(ex: Executor, dense: Run, seed: int, iteration: int) -> dict:
    """Weights at `iteration` of the dense run: the saved init, a saved checkpoint, or a
    deterministic replay of dense training up to that iteration."""
    saved = dense.path / ("init.pt" if iteration == 0 else f"checkpoints/iter_{iteration}.pt")
    if saved.exists():
        return load_tensors(saved)
    replay = Path(ex.ctx.root) / "rewind" / f"{dense.hash}-iter{iteration}.pt"
    if not replay.exists():
        model, _ = ex.load(dense, "init.pt")
        ex.train(None, model, ex.study.train, seed, stop_at_iteration=iteration)
        atomic_torch_save(model.state_dict(), replay)
    return load_tensors(replay)


def _reinitialised(ex: Executor, spec: ReinitSpec):
    """A control's start: its ticket's mask on a fresh random initialisation."""
    mask = load_mask(spec.ticket.path / "mask.pt")
    model = ex.new_model(spec.seed + REINIT_SEED_OFFSET)
    apply_mask(model, mask)
    log.info("random reinitialisation control for %s", spec.ticket.hash)
    return model, mask


class LotteryStage(Stage):
    name = kind = "lottery"
    help = "lottery-ticket iterative pruning with rewinding"
    result = True

    def runs(self, ctx: StudyContext) -> list[Run]:
        runs = []
        for entry in ctx.study.methods:
            hooks = method_of(entry).iterative
            if hooks is None:
                continue
            wanted = targets(ctx, entry)
            schedules = [shared_levels(level_schedule(ctx, entry, t), wanted) for t in wanted]
            asked = [(b, shared_levels(level_schedule(ctx, entry, budget_setting(ctx, entry, b)),
                                       wanted)) for b in budgets(ctx, entry)]
            control = hooks.reinit_control(entry.options)
            for seed in ctx.study.seeds:
                chains = [(None, s) for s in schedules] + asked
                for budget, schedule in chains:
                    if not schedule:
                        continue
                    final = level_run(ctx, entry, schedule, seed, budget)
                    runs.append(final)
                    if control:
                        runs.append(reinit_run(ctx, final))
        return runs

    def job_key(self, run: Run) -> str:
        """One job per method x seed: the chains of its targets share their levels, which
        are sequential by nature."""
        return f"seed{run.spec.seed}"

    def stack_recipe(self, ctx: StudyContext, run: Run):
        """The random-reinitialisation controls of one chain stack (their masks are all
        known once the chain is trained); the levels are sequential by nature."""
        return ctx.study.train if isinstance(run.spec, ReinitSpec) else None

    def execute_stack(self, ex: Executor, runs: list[Run]) -> None:
        started = [_reinitialised(ex, run.spec) for run in runs]
        share = ex.train_stack(runs, [m for m, _ in started], ex.study.train,
                               [mask for _, mask in started])
        for run, (model, mask) in zip(runs, started):
            ex.finish(run, model, ex.dense_arch, mask,
                      {"train_time_s": share, "stack_members": len(runs),
                       **budget_metrics(run.spec, model, ex.dense_arch, ex)})

    def execute(self, ex: Executor, run: Run) -> None:
        spec = run.spec
        recipe = ex.study.train
        if isinstance(spec, ReinitSpec):
            model, mask = _reinitialised(ex, spec)
            start = 0
        else:
            assert isinstance(spec, LevelSpec), spec
            method = method_of(spec.entry)
            previous = spec.previous
            trained, _ = ex.load(previous)
            current = (load_mask(previous.path / "mask.pt")
                       if isinstance(previous.spec, LevelSpec) else None)
            ctx = PruneContext(trained, ex.scope, spec.entry.options, seeded(spec.seed),
                               mask=current)
            mask = method(ctx, spec.target)
            # Late rewinding continues the schedule from iteration k (Frankle et al. 2020).
            start = method.iterative.rewind_iteration(spec.entry.options)
            model = ex.model_from_state(rewind_weights(ex, spec.dense, spec.seed, start))
            log.info("level %d: sparsity %.4f, rewound to iteration %d", spec.level,
                     spec.target, start)
            apply_mask(model, mask)
        elapsed, _ = ex.train(run.path, model, recipe, spec.seed, mask, start_iteration=start)
        ex.finish(run, model, ex.dense_arch, mask,
                  {"train_time_s": elapsed, **budget_metrics(spec, model, ex.dense_arch, ex)})


__all__ = ["LotteryStage", "level_run", "reinit_run", "rewind_weights", "shared_levels"]
