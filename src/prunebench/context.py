"""What planning needs of a study, and nothing more: the study, the runs root, the pruning
scope and the dense architecture's shape.

A `StudyContext` holds no device, no data and no lock, so it is safe wherever a plan is
made: in the Snakemake process, in `prunebench plan`, and when a CLI verb selects the runs of
a job before its executor exists. The dense architecture comes from the dataset and model
registries (shape and class count are declared there), never from reading data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from prunebench.config import Study
from prunebench.data import dataset_shape
from prunebench.pruning import Scope
from prunebench.runs import Arch


@dataclass(frozen=True)
class StudyContext:
    study: Study
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @cached_property
    def scope(self) -> Scope:
        return Scope(**dataclasses.asdict(self.study.scope))

    @cached_property
    def dense_arch(self) -> Arch:
        """The study's unpruned architecture, known without reading the data."""
        num_classes, input_shape = dataset_shape(self.study.data.name)
        model = self.study.model
        return Arch.of(model.name, num_classes, input_shape, factory=model.factory,
                       kwargs=model.kwargs)

    @cached_property
    def dense_costs(self) -> dict[str, int]:
        """Parameters and MACs of the unpruned architecture (what reductions compare with),
        counted on a model built on the CPU."""
        from prunebench.metrics import count_macs, size_counts

        model = self.dense_arch.build()
        return {"params_total": size_counts(model)["params_total"],
                "macs": count_macs(model, self.dense_arch.input_shape)}

    @cached_property
    def scope_counts(self):
        """All parameters of the unpruned architecture and the weights in the pruning scope:
        what translates a parameter budget into a weight sparsity (`prunebench.budgets`)."""
        from prunebench.budgets import ScopeCounts

        model = self.dense_arch.build()
        return ScopeCounts(params_total=sum(p.numel() for p in model.parameters()),
                           scope_weights=sum(p.numel() for p in self.scope.params(model).values()))

    @cached_property
    def memo(self) -> dict:
        """Runs the stages have already described for this context (the dense run of a seed
        is every other run's ancestor): described once, shared, since a run is its
        description."""
        return {}

    def with_seeds(self, seeds: Sequence[int]) -> StudyContext:
        """The same study with other seeds (the CLI's --seed)."""
        return StudyContext(dataclasses.replace(self.study, seeds=tuple(seeds)), self.root)


__all__ = ["StudyContext"]
