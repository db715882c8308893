"""Lottery: iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et
al. 2020), one chain per method x seed x target.

Each level is a run whose parent is the previous level (the first level's is the dense
run): it prunes the previous level's trained weights, rewinds the survivors to their values
at iteration `rewind_iteration` of the dense run, and retrains. Levels are sequential by
nature; a finished level is reused by every longer chain. `reinit_control` also trains the
final mask from a fresh random initialisation, the control that shows the initialisation
matters.
"""

from __future__ import annotations

import logging
from pathlib import Path


from prunebench.io import atomic_torch_save, load_tensors
from prunebench.pruning import PruneContext, apply_mask, load_mask
from prunebench.pruning.lottery import round_sparsities
from prunebench.runs import Run, Workspace, seeded
from prunebench.stages.base import Stage, dense_run, method_description, method_of, targets
from prunebench.training import train

log = logging.getLogger("prunebench")

REINIT_SEED_OFFSET = 1_000_000  # fresh initialisation for the lottery-ticket control


def lottery_schedule(prune_fraction: float, target: float) -> list[float]:
    """Sparsity after each round: prune `prune_fraction` of the remaining weights per round
    (Frankle & Carbin), and land exactly on `target` in the last round.

    A last round that would prune less than half a round's fraction of what remains (0.79 ->
    0.80 at prune_fraction 0.2) costs a whole retraining for a sliver: the round before it is
    dropped instead, so the last round prunes between 1/2 and 3/2 of a round's fraction."""
    if target <= 0:
        return []
    levels, density = [], 1.0
    while True:
        density *= 1.0 - prune_fraction
        if 1.0 - density >= target - 1e-9:
            break
        levels.append(1.0 - density)
    if levels and (1.0 - target) / (1.0 - levels[-1]) > 1.0 - prune_fraction / 2:
        levels.pop()
    return [*levels, target]


def level_schedule(ws: Workspace, opts, target: float) -> list[float]:
    """The sparsity of every level of a chain to `target`: by `prune_fraction` of all
    remaining weights per round, or, with per-layer rates (`output_prune_fraction`), the
    rounds of the study's architecture up to the first that reaches `target`."""
    if opts["output_prune_fraction"] is None:
        return lottery_schedule(opts["prune_fraction"], target)
    if target <= 0:
        return []
    return round_sparsities(ws.dense_arch.build(), ws.scope, opts, target)


def shared_levels(schedule: list[float], targets) -> list[float]:
    """`schedule` with every level that is one of `targets` up to float rounding replaced by
    that target, so the chains of a study share the levels its targets name: with 20 % per
    round, the chain to 0.488 passes through 1 - 0.8 * 0.8 = 0.3599999999999999, which is
    the level a target of 0.36 names, and is then trained once, not twice."""
    return [next((t for t in targets if abs(t - level) <= 1e-9), level) for level in schedule]


def level_run(ws: Workspace, entry, schedule: list[float], seed: int) -> Run:
    dense = dense_run(ws, seed)
    previous = level_run(ws, entry, schedule[:-1], seed) if len(schedule) > 1 else dense
    desc = {"parent": dense.description, "scope": ws.study.scope, **method_description(entry),
            "levels": list(schedule)}
    meta = {**dense.meta, "method": entry.method, "label": entry.label,
            "target_sparsity": schedule[-1], "level": len(schedule)}
    return Run(ws.root, "lottery", desc, meta, stage="lottery", label=entry.label,
               parents=(previous,), spec={"seed": seed, "entry": entry, "dense": dense})


def reinit_run(ws: Workspace, level: Run) -> Run:
    meta = {**level.meta, "method": f"{level.meta['method']}_reinit",
            "label": f"{level.meta['label']}_reinit"}
    return Run(ws.root, "lottery_reinit", {"level": level.description}, meta, stage="lottery",
               label=level.label, parents=(level,), spec={**level.spec, "reinit": True})


def rewind_weights(ws: Workspace, dense: Run, seed: int, iteration: int) -> dict:
    """Weights at `iteration` of the dense run: the saved init, a saved checkpoint, or a
    deterministic replay of dense training up to that iteration."""
    saved = dense.path / ("init.pt" if iteration == 0 else f"checkpoints/iter_{iteration}.pt")
    if saved.exists():
        return load_tensors(saved)
    replay = Path(ws.root) / "rewind" / f"{dense.hash}-iter{iteration}.pt"
    if not replay.exists():
        model, _ = ws.load(dense, "init.pt")
        train(model, ws.data, ws.study.train, seed=seed, stop_at_iteration=iteration,
              progress=ws.progress)
        atomic_torch_save(model.state_dict(), replay)
    return load_tensors(replay)


def _reinitialised(ws: Workspace, run: Run):
    """A control's start: its ticket's mask on a fresh random initialisation."""
    mask = load_mask(run.parents[0].path / "mask.pt")
    model = ws.new_model(run.spec["seed"] + REINIT_SEED_OFFSET)
    apply_mask(model, mask)
    log.info("random reinitialisation control for %s", run.parents[0].hash)
    return model, mask


class LotteryStage(Stage):
    name = kind = "lottery"
    help = "lottery-ticket iterative pruning with rewinding"
    result = True

    def runs(self, ws: Workspace) -> list[Run]:
        runs = []
        for entry in ws.study.methods:
            if method_of(entry).when != "iterative":
                continue
            wanted = targets(ws, entry)
            schedules = [shared_levels(level_schedule(ws, entry.options, t), wanted)
                         for t in wanted]
            for seed in ws.study.seeds:
                for schedule in filter(None, schedules):
                    final = level_run(ws, entry, schedule, seed)
                    runs.append(final)
                    if entry.options["reinit_control"]:
                        runs.append(reinit_run(ws, final))
        return runs

    def job_key(self, run: Run) -> str:
        """One job per method x seed: the chains of its targets share their levels, which
        are sequential by nature."""
        return f"seed{run.spec['seed']}"

    def stack_recipe(self, ws: Workspace, run: Run):
        """The random-reinitialisation controls of one chain stack (their masks are all
        known once the chain is trained); the levels are sequential by nature."""
        return ws.study.train if run.spec.get("reinit") else None

    def execute_stack(self, ws: Workspace, runs: list[Run]) -> None:
        started = [_reinitialised(ws, run) for run in runs]
        share = ws.train_stack(runs, [m for m, _ in started], ws.study.train,
                               [mask for _, mask in started])
        for run, (model, mask) in zip(runs, started):
            ws.finish(run, model, ws.dense_arch, mask,
                      {"train_time_s": share, "stack_members": len(runs)})

    def execute(self, ws: Workspace, run: Run) -> None:
        entry, seed, dense = run.spec["entry"], run.spec["seed"], run.spec["dense"]
        recipe = ws.study.train
        if run.spec.get("reinit"):
            model, mask = _reinitialised(ws, run)
        else:
            previous = run.parents[0]
            trained, _ = ws.load(previous)
            current = load_mask(previous.path / "mask.pt") if previous.kind == self.kind else None
            sparsity = run.description["levels"][-1]
            ctx = PruneContext(trained, ws.scope, entry.options, seeded(seed), mask=current)
            mask = method_of(entry)(ctx, sparsity)
            rewind = entry.options["rewind_iteration"]
            model = ws.model_from_state(rewind_weights(ws, dense, seed, rewind))
            log.info("level %d: sparsity %.4f, rewound to iteration %d", run.meta["level"],
                     sparsity, rewind)
            apply_mask(model, mask)
        # Late rewinding continues the schedule from iteration k (Frankle et al. 2020).
        start = 0 if run.spec.get("reinit") else entry.options["rewind_iteration"]
        elapsed, _ = ws.train(run.path, model, recipe, seed, mask, start_iteration=start)
        ws.finish(run, model, ws.dense_arch, mask, {"train_time_s": elapsed})
