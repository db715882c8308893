"""The prune stage's search for the setting that meets a budget (`prunebench.budgets`).

Each probe prunes a deep copy of the model the run prunes, with a fresh generator seeded as
the run's own (so the probe at the setting found is the pruning the run then does, for
methods that prune in one round), and measures the cost the budget is about: parameters or
MACs counted on the pruned copy, nonzero-weight MACs for a mask, or the speed-up over the
unpruned model timed in alternating rounds at the budget's batch size
(`prunebench.metrics.timing.paired_speedup`, as the benchmark stage times it). A method that
prunes in several rounds with fine-tuning between them is probed in one round: its outcome
is measured again on the model it makes, and that is what the run records.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunebench.budgets import (
    MAX_CHANNEL_FRACTION,
    MAX_SPARSITY,
    Budget,
    Infeasible,
    SearchResult,
    search,
)
from prunebench.errors import ConfigError
from prunebench.metrics import count_macs, size_counts
from prunebench.metrics.macs import nonzero_macs
from prunebench.metrics.timing import paired_speedup
from prunebench.pruning import PruneContext, apply_mask
from prunebench.runs import Arch, seeded
from prunebench.stages.base import method_of

if TYPE_CHECKING:
    from prunebench.executor import Executor
    from prunebench.specs import PruneSpec

log = logging.getLogger("prunebench")

# Timing per latency probe at least this long (the study's benchmark.min_time_s if longer),
# and the outcome timed OUTCOME_TIMES as long: a search on 50 ms probes settled on a
# setting whose speed-up the benchmark then measured 20 % lower.
LATENCY_PROBE_S = 0.25
OUTCOME_TIMES = 4


def cost(budget: Budget, model: nn.Module, input_shape: tuple[int, ...], dense: dict[str, int],
         structured: bool, reference: nn.Module | None = None,
         min_time_s: float = 0.1) -> float:
    """What `model` achieves, in the budget's unit (see `prunebench.budgets.KINDS`)."""
    if budget.kind in ("params", "compression"):
        nonzero = size_counts(model)["params_nonzero"]
        if budget.kind == "compression":
            return dense["params_total"] / nonzero
        return 1.0 - nonzero / dense["params_total"]
    if budget.kind == "macs":
        macs = count_macs(model, input_shape) if structured else nonzero_macs(model, input_shape)
        return 1.0 - macs / dense["macs"]
    assert reference is not None, "a latency budget needs the unpruned model to time against"
    device = next(reference.parameters()).device
    x = torch.randn(budget.batch_size, *input_shape, generator=seeded(0)).to(device)
    return paired_speedup(model, reference, x, min_time_s=min_time_s)


def search_budget(ex: Executor, spec: PruneSpec, model: nn.Module, ctx: PruneContext,
                  arch: Arch) -> SearchResult:
    """The setting (channel fraction or sparsity) that meets `spec.budget`, by bisection on
    probes of the real pruning; `model` and `ctx` are left as they were."""
    method = method_of(spec.entry)
    budget = spec.budget
    shape = tuple(arch.input_shape)
    dense = ex.ctx.dense_costs
    reference = model if budget.kind == "latency" else None

    def probe(setting: float) -> float:
        work = copy.deepcopy(model)
        trial = dataclasses.replace(ctx, model=work, generator=seeded(spec.seed))
        try:
            if method.structured:
                method(trial, setting)
            else:
                apply_mask(work, method(trial, setting))
        except ConfigError as err:  # a setting the method refuses (a layer cap)
            raise Infeasible(str(err)) from err
        return cost(budget, work, shape, dense, method.structured, reference,
                    probe_time(ex))

    high = MAX_CHANNEL_FRACTION if method.structured else MAX_SPARSITY
    return search(budget, probe, high)


def probe_time(ex: Executor) -> float:
    return max(LATENCY_PROBE_S, ex.study.benchmark.min_time_s)


def budget_outcome(budget: Budget, model: nn.Module, arch: Arch, ex: Executor,
                   structured: bool, reference: nn.Module | None = None) -> dict[str, Any]:
    """What the pruned model achieved (`budget_achieved`, `budget_met`), counted again on
    it; for latency, timed again against `reference` (the unpruned model) for
    `OUTCOME_TIMES` a probe's time (the benchmark stage times it once more, with its
    spread)."""
    achieved = cost(budget, model, tuple(arch.input_shape), ex.ctx.dense_costs, structured,
                    reference, OUTCOME_TIMES * probe_time(ex))
    return {"budget_achieved": achieved, "budget_met": budget.met(achieved),
            "budget_tolerance": budget.tolerance}


def budget_metrics(spec: Any, model: nn.Module, arch: Arch, ex: Executor) -> dict[str, Any]:
    """A masked run planned at the sparsity that meets its budget exactly (no search): the
    setting and what the model achieved; {} for a run not asked for a budget."""
    if spec.budget is None:
        return {}
    return {"budget_setting": spec.target,
            **budget_outcome(spec.budget, model, arch, ex, structured=False)}


__all__ = ["budget_metrics", "budget_outcome", "cost", "search_budget"]
