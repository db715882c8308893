"""Budget targets: ask every method for the same cost, not for the same knob.

A weight sparsity means one thing to an unstructured method and nothing to a structured
one, whose knob is the fraction of channels it removes. To compare them at equal cost a
study lists `budgets`, each a kind and its values:

    budgets:
      - {kind: params, values: [0.5, 0.75]}         # fraction of all parameters removed
      - {kind: compression, values: [2, 4, 8]}      # dense parameters / nonzero parameters
      - {kind: macs, values: [0.5, 0.75]}           # fraction of MACs removed
      - {kind: latency, values: [1.5], batch_size: 128}  # measured speed-up at that batch

Every method that can be asked for a budget gets one run per value, next to its runs at the
study's `sparsities` / `channel_sparsities`:

- **Structured methods** (channels removed): the channel fraction is found by bisection on
  the real surgery: each probe prunes a copy of the trained model and counts its parameters
  or MACs, or, for `latency`, times it paired against the unpruned model at the budget's
  batch size (as the benchmark stage does). The run is pruned at the fraction whose cost is
  closest to the budget, and records the fraction, the cost it achieved and whether that is
  within the budget's `tolerance` (relative, on the remaining share: 0.05 accepts 47.5-52.5 %
  of the parameters left for `params: 0.5`; for `latency` on the speed-up itself). A timed
  search follows the machine's noise near the goal, so a latency budget's setting can
  differ between machines and loads (each run records the one it used).
- **Unstructured methods** (masks): `params` and `compression` translate exactly into the
  weight sparsity of the pruning scope, at planning, from the unpruned architecture's counts
  (a budget the scope cannot reach is refused then). `macs` means *nonzero-weight* MACs
  (products with a zero weight skipped, what a sparse kernel could save; dense kernels still
  pay every MAC), and the sparsity is found by bisection on the method's real mask. Tables
  label it so. `latency` is not asked of a mask: on dense kernels it leaves latency as it is.
- Methods whose options fix their sparsity (N:M) get no budget. Methods whose mask exists
  only during or after their own training (gradual, lottery) get the budgets they can meet
  exactly (`params`, `compression`) and no others. `refusal` says why.

The budget (kind, value, batch size, tolerance) is part of a run's name, and the achieved
cost and the setting found are in its metrics (`budget_*`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prunebench.errors import ConfigError

# kind -> what `value` is, and the unit the achieved cost is reported in
KINDS: dict[str, str] = {
    "params": "fraction of all parameters removed, in (0, 1)",
    "compression": "dense parameters / nonzero parameters, > 1",
    "macs": "fraction of MACs removed, in (0, 1) (nonzero-weight MACs for masks)",
    "latency": "speed-up over the unpruned model at `batch_size`, > 1 (structured methods)",
}
DEFAULT_TOLERANCE = 0.05
MAX_TOLERANCE = 0.5
BUDGET_KEYS = ("kind", "values", "batch_size", "tolerance")
SEARCH_STEPS = 12  # bisection steps: 1/4096 of the search interval
MAX_CHANNEL_FRACTION = 0.95  # what a structured search may remove at most
MAX_SPARSITY = 0.999


@dataclass(frozen=True)
class Budget:
    """One budget point: a kind and its value (see `KINDS`)."""

    kind: str
    value: float
    batch_size: int | None = None  # latency only
    tolerance: float = DEFAULT_TOLERANCE

    def describe(self) -> dict[str, Any]:
        """What names a run (and what its config says): the tolerance only when not the
        default, so adding options keeps names."""
        out: dict[str, Any] = {"kind": self.kind, "value": self.value}
        if self.batch_size is not None:
            out["batch_size"] = self.batch_size
        if self.tolerance != DEFAULT_TOLERANCE:
            out["tolerance"] = self.tolerance
        return out

    @property
    def goal(self) -> float:
        """The achieved cost that meets the budget exactly, in `achieved`'s unit."""
        return self.value

    def remaining(self, achieved: float) -> float:
        """The share of the unpruned cost left (parameters, MACs or time) at `achieved`."""
        if self.kind in ("params", "macs"):
            return 1.0 - achieved
        return 1.0 / achieved if achieved > 0 else math.inf

    def miss(self, achieved: float) -> float:
        """How far `achieved` is from the budget: relative, on the remaining share (on the
        speed-up itself for latency)."""
        if self.kind == "latency":
            return abs(achieved / self.value - 1.0)
        return abs(self.remaining(achieved) / self.remaining(self.value) - 1.0)

    def met(self, achieved: float) -> bool:
        """Whether `achieved` is within the tolerance (`miss`)."""
        return self.miss(achieved) <= self.tolerance

    def label(self) -> str:
        """How tables name the point: "50% params removed", "4x compression", ..."""
        if self.kind == "params":
            return f"{self.value * 100:g}% params removed"
        if self.kind == "macs":
            return f"{self.value * 100:g}% MACs removed"
        if self.kind == "compression":
            return f"{self.value:g}x compression"
        return f"{self.value:g}x speed-up at batch {self.batch_size}"


def parse_budgets(raw: Any, key: str, *, benchmark_batch_sizes: Sequence[int]) -> tuple[Budget, ...]:
    """`studies.<s>.budgets`, checked: every entry's keys, kind and values, a latency
    budget's batch size (one the benchmark stage measures, so the tables can show the
    speed-up it achieved), and no point given twice."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise ConfigError(f"{key} must be a list of {{kind, values}} mappings; kinds: "
                          f"{', '.join(KINDS)}")
    out: list[Budget] = []
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where} must be a mapping with keys {', '.join(BUDGET_KEYS)}")
        unknown = sorted(set(item) - set(BUDGET_KEYS), key=str)
        if unknown:
            raise ConfigError(f"unknown key {where}.{unknown[0]}; allowed: {', '.join(BUDGET_KEYS)}")
        kind = item.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"{where}.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        values = item.get("values")
        if not isinstance(values, Sequence) or isinstance(values, str) or not values:
            raise ConfigError(f"{where}.values must be a non-empty list: {KINDS[kind]}")
        tolerance = item.get("tolerance", DEFAULT_TOLERANCE)
        if (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                or not 0 < tolerance <= MAX_TOLERANCE):
            raise ConfigError(f"{where}.tolerance must be a number in (0, {MAX_TOLERANCE}], "
                              f"got {tolerance!r}")
        batch = item.get("batch_size")
        if kind == "latency":
            if (not isinstance(batch, int) or isinstance(batch, bool)
                    or batch not in benchmark_batch_sizes):
                raise ConfigError(f"{where}.batch_size must be one of the benchmark's batch "
                                  f"sizes {list(benchmark_batch_sizes)} (key "
                                  f"{key.rsplit('.', 1)[0]}.benchmark.batch_sizes), got {batch!r}")
        elif batch is not None:
            raise ConfigError(f"{where}.batch_size is for latency budgets only")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not _in_range(kind, v):
                raise ConfigError(f"{where}.values: {v!r} is not a {KINDS[kind]}")
            out.append(Budget(kind, float(v), batch, float(tolerance)))
    seen: dict[tuple, Budget] = {}
    for b in out:
        # `params: v` and `compression: 1 / (1 - v)` are one point (the same parameters left)
        point = (("params", round(removed_params(b), 12), None) if b.kind in ("params", "compression")
                 else (b.kind, b.value, b.batch_size))
        if point in seen:
            raise ConfigError(f"{key} lists one point twice: {seen[point].label()} and "
                              f"{b.label()}")
        seen[point] = b
    return tuple(out)


def removed_params(budget: Budget) -> float:
    """The fraction of all parameters a `params` or `compression` budget removes."""
    return budget.value if budget.kind == "params" else 1.0 - 1.0 / budget.value


def _in_range(kind: str, v: float) -> bool:
    if kind in ("params", "macs"):
        return 0.0 < v < 1.0
    return 1.0 < v < math.inf


def refusal(method: Any, options: Mapping[str, Any], budget: Budget) -> str | None:
    """Why `method` is not asked for `budget` (None: it is). `method` is a registered
    `PruningMethod`."""
    if method.structured:
        return None
    if budget.kind == "latency":
        return "a mask leaves dense kernels' latency unchanged"
    if method.fixed_sparsity is not None and method.fixed_sparsity(options) is not None:
        return "its options fix its sparsity"
    if method.when not in ("trained", "init"):
        if budget.kind == "macs":
            return "its mask exists only once it has trained, so no search can find its MACs"
        # params / compression translate exactly, whatever makes the mask
    return None


@dataclass(frozen=True)
class ScopeCounts:
    """What the analytic translation needs: all parameters of the unpruned model and the
    weights in the pruning scope."""

    params_total: int
    scope_weights: int


def planned_sparsity(budget: Budget, counts: ScopeCounts, key: str) -> float | None:
    """The scope weight sparsity that meets a `params` / `compression` budget exactly (an
    unstructured method prunes that fraction of the scope's weights), or None where the
    budget needs a search. Refuses a budget that pruning the scope alone cannot reach."""
    if budget.kind not in ("params", "compression"):
        return None
    removed = removed_params(budget)
    sparsity = removed * counts.params_total / counts.scope_weights
    if not sparsity < MAX_SPARSITY:
        most = MAX_SPARSITY * counts.scope_weights / counts.params_total
        raise ConfigError(f"{key}: {budget.label()} needs {sparsity:.1%} of the pruning scope's "
                          f"weights removed; pruning the scope's {counts.scope_weights:,} of "
                          f"{counts.params_total:,} parameters removes at most {most:.1%}")
    return round(sparsity, 12)


@dataclass
class SearchResult:
    setting: float
    achieved: float
    met: bool
    probes: list[tuple[float, float]] = field(default_factory=list)

    def metrics(self, budget: Budget) -> dict[str, Any]:
        return {"budget_setting": self.setting, "budget_achieved": self.achieved,
                "budget_met": self.met, "budget_probes": len(self.probes)}


class Infeasible(Exception):
    """A probe's setting that the method refuses (e.g. sensitivity above its layer cap)."""


HIGH_LADDER = (0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.5)  # where a refused top setting retries


def search(budget: Budget, probe: Callable[[float], float], high: float,
           steps: int = SEARCH_STEPS) -> SearchResult:
    """The setting in [0, high] whose cost `probe(setting)` (non-decreasing in the setting,
    in the budget's unit) is closest to the budget, by bisection on the smallest setting
    that reaches it; "closest" as `met` measures it (relative, on the share left). Channel
    counts are whole numbers, so the cost is a step function. A probe may raise
    `Infeasible` at a setting the method refuses: the top of the interval then steps down
    `HIGH_LADDER` (a refusal below an accepted setting ends the bisection). A budget past
    what the top achieves returns the top, not met. Timed costs (latency) are noisy: the
    bisection then follows the noise near the goal, so the setting it finds may differ
    between machines and loads (the run records it)."""
    probes: list[tuple[float, float]] = []

    def cost(x: float) -> float | None:
        try:
            value = probe(x)
        except Infeasible:
            return None
        probes.append((x, value))
        return value

    top = cost(high)
    for lower in (h for h in HIGH_LADDER if h < high):
        if top is not None:
            break
        high, top = lower, cost(lower)
    if top is None:
        raise Infeasible(f"the method refuses every setting up to {high}")
    if top < budget.goal:
        return SearchResult(high, top, budget.met(top), probes)
    lo, hi, lo_cost, hi_cost = 0.0, high, None, top
    for _ in range(steps):
        mid = (lo + hi) / 2
        c = cost(mid)
        if c is None:  # refused below a setting it accepted: stop at what is known
            break
        if c >= budget.goal:
            hi, hi_cost = mid, c
        else:
            lo, lo_cost = mid, c
    best, achieved = hi, hi_cost
    if lo_cost is not None and budget.miss(lo_cost) < budget.miss(hi_cost):
        best, achieved = lo, lo_cost
    return SearchResult(best, achieved, budget.met(achieved), probes)


__all__ = ["Budget", "DEFAULT_TOLERANCE", "KINDS", "Infeasible", "ScopeCounts", "SearchResult",
           "parse_budgets", "planned_sparsity", "refusal", "removed_params", "search"]
