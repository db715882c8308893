"""Typed run specs: one frozen dataclass per kind of run, with its parent runs named.

A stage lists its runs (`Stage.runs`), each a `Run` whose `spec` says what kind of run it is
and what it needs: the method entry, the seed, the target, and the runs it reads, each by
name (`RecoverSpec(pruned=..., teacher=...)`), never by position. A run's parents are the
`Run` fields of its spec, in field order. Recovery (`finetune` / `distill`, a field of
`RecoverSpec`; `rewind`, a class attribute of `RewindSpec` and `RewindReinitSpec`) and
control (`ticket` / `reinit`, a class attribute of `LevelSpec`, `ReinitSpec` and the two
rewind specs) are written to the run's metadata (and so to the columns of `runs.csv`), never
into a label.

Specs say what a run is; they are not hashed. Everything that changes a run's result is in
its description (`Run.description`), which names its directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from prunebench.budgets import Budget
from prunebench.config import MethodEntry
from prunebench.runs import Run

Recovery = Literal["finetune", "distill", "rewind"]
Control = Literal["ticket", "reinit"]


@dataclass(frozen=True, eq=False, kw_only=True)
class RunSpec:
    """What every spec has: the seed, and the grid target it was asked for (what the CLI's
    --sparsity selects): a weight or channel sparsity, 0 for dense training, the measured
    run's for a benchmark, None for a sensitivity run."""

    seed: int
    target: float | None = None
    # The cost it was asked for instead of a sparsity (`prunebench.budgets`); `target` is then
    # the sparsity planning translated it into, or None where the prune stage searches.
    budget: Budget | None = None
    # Which lottery run this is (a ticket, or the random-reinitialisation control); None for
    # every other kind.
    control: ClassVar[Control | None] = None

    @property
    def parents(self) -> tuple[Run, ...]:
        """The runs this run reads: the `Run` fields, in field order."""
        values = (getattr(self, f.name) for f in dataclasses.fields(self))
        return tuple(v for v in values if isinstance(v, Run))


@dataclass(frozen=True, eq=False, kw_only=True)
class DenseSpec(RunSpec):
    """The dense baseline of one seed: trained from a fresh initialisation (saved as
    `init.pt`, which rewinding and methods applied at initialisation start from)."""


@dataclass(frozen=True, eq=False, kw_only=True)
class PretrainSpec(RunSpec):
    """A method's own dense training (its `pretrain` hook changes the recipe)."""

    entry: MethodEntry


@dataclass(frozen=True, eq=False, kw_only=True)
class DuringTrainingSpec(RunSpec):
    """A method that prunes during training (its `training_callback` hook), from the
    initialisation of `init`, the dense run of the same seed."""

    entry: MethodEntry
    target: float
    init: Run


@dataclass(frozen=True, eq=False, kw_only=True)
class SensitivitySpec(RunSpec):
    """Per-layer sensitivity curves of the `dense` model at the layer sparsities `sweep`."""

    sweep: Sequence[float]
    dense: Run


@dataclass(frozen=True, eq=False, kw_only=True)
class PruneSpec(RunSpec):
    """One-shot pruning of `trained` (its trained weights, or its initialisation for methods
    applied at initialisation) to `target`, reading the `sensitivity` run where the method
    uses one."""

    entry: MethodEntry
    target: float | None
    trained: Run
    sensitivity: Run | None = None


@dataclass(frozen=True, eq=False, kw_only=True)
class RecoverSpec(RunSpec):
    """Retraining the `pruned` network with its structure fixed: on the labels (`finetune`),
    or with the dense model of the same seed as `teacher` (`distill`)."""

    entry: MethodEntry
    target: float | None
    recovery: Recovery
    pruned: Run
    teacher: Run | None = None


@dataclass(frozen=True, eq=False, kw_only=True)
class LevelSpec(RunSpec):
    """One level of an iterative chain (a lottery ticket): prune `previous` (the level before,
    or the dense run for the first) to `target`, rewind the survivors to the weights of
    `dense` at the method's rewind iteration, and retrain."""

    control: ClassVar[Control] = "ticket"
    entry: MethodEntry
    target: float
    level: int
    previous: Run
    dense: Run


@dataclass(frozen=True, eq=False, kw_only=True)
class ReinitSpec(RunSpec):
    """The random-reinitialisation control of a `ticket`: its mask on a fresh initialisation."""

    control: ClassVar[Control] = "reinit"
    entry: MethodEntry
    target: float
    ticket: Run


@dataclass(frozen=True, eq=False, kw_only=True)
class RewindSpec(RunSpec):
    """Rewinding as a recovery (Frankle & Carbin 2019's one-shot ticket): the mask of
    `pruned` (a one-shot pruning run, or a run that pruned during training) on the weights of
    `dense` at `iteration` (0: its initialisation), retrained with the full train recipe from
    that iteration on. A ticket, whose control is a `RewindReinitSpec`."""

    control: ClassVar[Control] = "ticket"
    recovery: ClassVar[Recovery] = "rewind"
    entry: MethodEntry
    target: float
    iteration: int
    pruned: Run
    dense: Run


@dataclass(frozen=True, eq=False, kw_only=True)
class RewindReinitSpec(RunSpec):
    """The random-reinitialisation control of a rewind run: the mask of `pruned` on a fresh
    initialisation, trained with the full train recipe from iteration 0."""

    control: ClassVar[Control] = "reinit"
    recovery: ClassVar[Recovery] = "rewind"
    entry: MethodEntry
    target: float
    pruned: Run


@dataclass(frozen=True, eq=False, kw_only=True)
class BenchmarkSpec(RunSpec):
    """Measuring the model of a `result` run against the `dense` model of its seed."""

    result: Run
    dense: Run


__all__ = ["BenchmarkSpec", "Control", "DenseSpec", "DuringTrainingSpec", "LevelSpec",
           "PretrainSpec", "PruneSpec", "RecoverSpec", "Recovery", "ReinitSpec",
           "RewindReinitSpec", "RewindSpec", "RunSpec", "SensitivitySpec"]
