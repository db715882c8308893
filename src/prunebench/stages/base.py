"""The contract every stage follows, and the run descriptions several stages share.

A stage is one module: it says which runs it makes for a study (one per grid point, each
with its parent runs) and how to make one run. `plan.py`, the CLI and the workflow iterate
over the stages; none of them branches on a method's name or on when it acts. A method
declares what it needs (`when`, `produces`, `uses_sensitivity`, `pretrain`) and the stages
read those declarations, so adding a method never touches a stage.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prunebench.config import MethodEntry, TrainConfig
from prunebench.pruning import METHODS, PruningMethod
from prunebench.runs import Run, Workspace

DENSE = "dense"


class Stage:
    """One kind of work. Subclasses set the class attributes and implement the two methods.

    name:   the CLI verb, the plan's job stage and the workflow rule
    kind:   the run directory kind (`results/runs/<kind>/<hash>`)
    result: its runs are results (tables and plots), not intermediate
    default_label: what `prunebench <name>` runs without --method (None: every label)
    """

    name: str = ""
    kind: str = ""
    help: str = ""
    result: bool = False
    default_label: str | None = None

    def runs(self, ws: Workspace) -> list[Run]:
        raise NotImplementedError

    def execute(self, ws: Workspace, run: Run) -> None:
        """Make `run`; its parents are done and its log is open."""
        raise NotImplementedError

    def stack_recipe(self, ws: Workspace, run: Run) -> TrainConfig | None:
        """The recipe `run` trains with when it may share a stack with other runs of this
        stage and recipe (`prunebench.stacking`), else None (the default): it trains alone."""
        return None

    def execute_stack(self, ws: Workspace, runs: list[Run]) -> None:
        """Make `runs` as one stack; their parents are done and their logs are open."""
        raise NotImplementedError

    def job_key(self, run: Run) -> str | None:
        """Runs with the same key (and label) are made by one job, in order; None (the
        default) makes every run its own job, one per grid point."""
        return None


def method_of(entry: MethodEntry) -> PruningMethod:
    return METHODS.get(entry.method)


def targets(ws: Workspace, entry: MethodEntry) -> tuple[float, ...]:
    """What the method is asked for at each grid point: channel sparsities for structured
    methods, weight sparsities otherwise (or the one its options fix, N:M)."""
    method = method_of(entry)
    if method.structured:
        return ws.study.channel_sparsities
    return method.sparsities(entry.options, ws.study.sparsities)


def target_meta(method: PruningMethod, target: float) -> dict[str, float | None]:
    """Names that cannot be misread: what a structured method was asked for is the fraction
    of channels removed, never a weight sparsity."""
    if method.structured:
        return {"target_sparsity": None, "channel_sparsity": target}
    return {"target_sparsity": target, "channel_sparsity": None}


def base_meta(ws: Workspace, seed: int) -> dict[str, Any]:
    s = ws.study
    return {"study": s.name, "dataset": s.data.name, "model": s.model.name, "method": DENSE,
            "label": DENSE, "target_sparsity": 0.0, "channel_sparsity": None,
            "recovery": None, "seed": seed, "data": dataclasses.asdict(s.data), "result": True}


def dense_description(ws: Workspace, recipe: TrainConfig, seed: int) -> dict[str, Any]:
    """What names a dense training run. Every other run nests it, so the thread count (which
    changes float reduction order, and so results) names them all; 1, the default, is left
    out so that names made before it was recorded stay valid."""
    s = ws.study
    desc = {"data": s.data, "model": s.model, "train": recipe, "seed": seed}
    if s.threads != 1:
        desc["threads"] = s.threads
    return desc


def dense_run(ws: Workspace, seed: int) -> Run:
    """The dense baseline of one seed (also every method's source of initial weights)."""
    desc = dense_description(ws, ws.study.train, seed)
    return Run(ws.root, "train", desc, base_meta(ws, seed), stage="train", label=DENSE,
               spec={"seed": seed})


def pretrain_recipe(ws: Workspace, entry: MethodEntry) -> TrainConfig:
    """The dense recipe with a method's own training changes (slimming's BN penalty)."""
    method = method_of(entry)
    return dataclasses.replace(ws.study.train, **method.pretrain(entry.options))


def pretrained_run(ws: Workspace, entry: MethodEntry, seed: int) -> Run:
    """The trained model a method prunes: the dense run, or its own pretraining run."""
    if method_of(entry).pretrain is None:
        return dense_run(ws, seed)
    desc = dense_description(ws, pretrain_recipe(ws, entry), seed)
    meta = {**base_meta(ws, seed), "method": entry.method, "label": f"{entry.label}_pretrain",
            "result": False}
    return Run(ws.root, "train", desc, meta, stage="train", label=entry.label,
               spec={"seed": seed, "entry": entry})


def method_description(entry: MethodEntry) -> dict[str, Any]:
    """A method as a run's description names it: options equal to their defaults are left
    out, so adding an option with a default keeps old run names valid."""
    return {"method": entry.method, "options": method_of(entry).hashed_options(entry.options)}
