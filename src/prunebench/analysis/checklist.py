"""Blalock et al.'s reporting checklist, checked against a study's runs.

Blalock, Ortiz, Frankle & Guttag, "What is the state of neural network pruning?" (MLSys
2020), found that pruning papers could not be compared: too few operating points, one of
compression or speed-up but not both, no unpruned control, single runs, and each paper its
own baselines. They asked every paper to report what follows. `study_checklist` says for one
study whether its runs (the runs table, `runs.csv`) meet each request, and why not when they
do not, naming the numbers; the report shows it per study and `checklist.json` holds it as
data.

Terms. A *series* is what one line of the figures shows (`series`: a method label with its
recovery or lottery control, "global_magnitude+distill", "lottery_reinit"); the dense series
is the unpruned control. A series' *operating points* are the distinct targets it was run at:
weight sparsities for unstructured methods, fractions of channels removed for structured ones
(`channel_sparsity`), or, for a run asked for a cost budget (`budget_kind`, `budget_value`
when the runs table has them), that budget. A *grid point* is one series at one operating
point; its runs differ only by seed.

The rules, one per request (`RULES` says them in one line each):

1. Operating points (`operating_points`): every pruned series has at least `MIN_POINTS` (5,
   the paper's "e.g. compression 2, 4, 8, 16, 32"). A series whose method fixes its sparsity
   through its options (N:M: 1 − N/M; the method registry's `fixed_sparsity`) and whose runs
   all have that one weight sparsity (a budget run that names it, compression 2 for 2:4,
   included) is exempt: no study could give it more, and the planner runs it only there. It
   is listed as such, and it cannot meet the request alone: a study with no pruned series
   other than exempt ones fails.
2. Compression and speed-up (`compression_and_speedup`): every pruned grid point has both a
   compression ratio (the unpruned model's parameters / nonzero parameters,
   `compression_ratio`) and a theoretical speed-up (the unpruned model's MACs / effective
   MACs, those of nonzero weights only, `theoretical_speedup`; `aggregate.add_ratios`). The
   speed-up needs the benchmark's `macs_effective`: a grid point no benchmark measured fails.
3. Top-1 and top-5 (`top1_and_top5`): the runs table has both columns, with a value at every
   grid point, dense included.
4. The unpruned control (`dense_control`): the study has dense runs.
5. Several runs (`seeds`): every grid point, dense included, has at least `MIN_SEEDS` (3)
   distinct seeds, so the tables' mean ± std rest on three runs or more.
6. Trade-off curves against the same baselines (`shared_baselines`): every series is drawn in
   the same figures (`SHARED_FIGURES`: accuracy against the parameters and the MACs left,
   which place structured and unstructured methods on one measured axis), against the same
   baselines: the dense control (the dashed line) and at least one magnitude-pruning baseline
   (a series of a method in `MAGNITUDE_BASELINES`, the paper's global and layer-wise
   magnitude pruning, or their channel-level counterparts for structured studies). Every
   series needs its `param_reduction` and `macs_reduction` to be placed; where the caller
   says which figures exist, both figures must.

Plain pandas: the method registry (for rule 1) is imported only when no `fixed_sparsity`
function is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from prunebench.analysis.aggregate import add_ratios, studies, target_key
from prunebench.analysis.names import DENSE_LABEL
from prunebench.io import atomic_write_json

PAPER = ("Blalock, Ortiz, Frankle & Guttag, \"What is the state of neural network "
         "pruning?\", MLSys 2020")
MIN_POINTS = 5
MIN_SEEDS = 3
# Magnitude pruning, the baseline the paper asks every method to be compared against: global
# and layer-wise magnitude of weights, and for structured studies the L1 norm of filters and
# of neurons.
MAGNITUDE_BASELINES = ("global_magnitude", "layer_magnitude", "l1_filter", "neuron_magnitude")
# The figures that draw every series against the dense control on one measured axis
# (`plots.accuracy_vs_params_figure`, `plots.accuracy_vs_macs_figure`), with the summary
# column each places a series by.
SHARED_FIGURES = {"accuracy_vs_params": "param_reduction", "accuracy_vs_macs": "macs_reduction"}
NAMED = 6  # a detail names at most this many series or grid points, then says how many more

REQUESTS = {
    "operating_points": f"At least {MIN_POINTS} operating points per method",
    "compression_and_speedup": "Both compression ratio and theoretical speed-up",
    "top1_and_top5": "Top-1 and top-5 accuracy",
    "dense_control": "The unpruned (dense) control",
    "seeds": f"Mean ± std over at least {MIN_SEEDS} seeds at every grid point",
    "shared_baselines": ("Trade-off curves of every method against the same baselines "
                         "(dense and magnitude pruning)"),
}
RULES = {
    "operating_points": (
        f"every pruned series has at least {MIN_POINTS} distinct targets (weight sparsities, "
        "channel fractions or budgets); a series whose method fixes its sparsity (N:M) and "
        "whose runs all have that one sparsity is exempt, but does not meet the request "
        "alone"),
    "compression_and_speedup": (
        "every pruned grid point has compression_ratio (unpruned params / nonzero params) and "
        "theoretical_speedup (unpruned MACs / effective MACs, from the benchmark)"),
    "top1_and_top5": "top1 and top5 columns with a value at every grid point",
    "dense_control": "the study has runs of the dense series",
    "seeds": f"every grid point, dense included, has at least {MIN_SEEDS} distinct seeds",
    "shared_baselines": (
        "every series is placed in " + " and ".join(SHARED_FIGURES) + " (which exist), "
        "with the dense control and a series of " + ", ".join(MAGNITUDE_BASELINES)),
}


@dataclass(frozen=True)
class Item:
    """One request of the checklist for one study: whether the study meets it, what the
    data show (`detail`, one line naming the numbers) and the numbers themselves (`data`)."""

    key: str
    met: bool
    detail: str
    data: dict = field(default_factory=dict)

    @property
    def request(self) -> str:
        return REQUESTS[self.key]

    def as_json(self, number: int) -> dict:
        return {"number": number, "request": self.request, "rule": RULES[self.key],
                **asdict(self)}


# ---------------------------------------------------------------- helpers


def registry_fixes_sparsity(method: str) -> bool:
    """Whether the registered pruning method `method` fixes its sparsity through its options
    (`PruningMethod.fixed_sparsity`, N:M); False for a name the registry does not know."""
    from prunebench.pruning import METHODS

    return method in METHODS and METHODS.get(method).fixed_sparsity is not None


def _number(x: float) -> str:
    return f"{x:g}"


def _names(names: Sequence[str]) -> str:
    """`names` joined, at most NAMED of them and then how many more."""
    shown = ", ".join(names[:NAMED])
    return shown if len(names) <= NAMED else f"{shown} and {len(names) - NAMED} more"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 or word.endswith('s') else 's'}"


def _given(value: Any) -> bool:
    return not (value is None or (isinstance(value, float) and math.isnan(value)))


def _point(row: Mapping[str, Any]) -> str:
    """A run's operating point as a stable text: "s0.80" (weight sparsity), "c0.50"
    (channels removed), or "<budget kind>=<value>" for a run asked for a cost budget."""
    kind = row.get("budget_kind")
    if _given(kind):
        batch = row.get("budget_batch_size")
        at = f"@b{int(batch)}" if _given(batch) else ""
        return f"{kind}={_number(float(row['budget_value']))}{at}"
    return target_key(row.get("target_sparsity"), row.get("channel_sparsity"))


def _is_budget(point: str) -> bool:
    return "=" in point


def _point_text(points: Sequence[str]) -> str:
    """["s0.50", "s0.80"] -> "0.5, 0.8"; ["c0.25", "c0.50"] -> "channels removed 0.25, 0.5";
    budget points as they are ("params=0.25")."""
    budgets = [p for p in points if _is_budget(p)]
    weights = [_number(float(p[1:])) for p in points if p[0] == "s" and not _is_budget(p)]
    channels = [_number(float(p[1:])) for p in points if p[0] == "c" and not _is_budget(p)]
    parts = [", ".join(weights)] if weights else []
    parts += [f"channels removed {', '.join(channels)}"] if channels else []
    parts += [", ".join(budgets)] if budgets else []
    return " and ".join(parts)


def _grid(runs: pd.DataFrame) -> pd.DataFrame:
    """The study's runs with `point` (the operating point) and `grid_point` ("series @
    point") columns."""
    records = runs.to_dict("records")
    points = [_point(r) for r in records]
    return runs.assign(point=points,
                       grid_point=[f"{r['series']} @ {p}" for r, p in zip(records, points)])


def _pruned(grid: pd.DataFrame) -> pd.DataFrame:
    return grid[grid["series"] != DENSE_LABEL]


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    if name not in runs:
        return pd.Series(math.nan, index=runs.index, dtype=float)
    return pd.to_numeric(runs[name], errors="coerce")


def _missing_points(grid: pd.DataFrame, column: str) -> list[str]:
    """The grid points of which no run has a (finite or infinite) value in `column`."""
    has = _column(grid, column).notna().groupby(grid["grid_point"]).any()
    return sorted(has.index[~has])


# ---------------------------------------------------------------- the six requests


def operating_points(grid: pd.DataFrame,
                     fixed_sparsity: Callable[[str], bool]) -> Item:
    pruned = _pruned(grid)
    series, fixed_at = {}, set()
    for name in sorted(set(pruned["series"])):
        rows = pruned[pruned["series"] == name]
        methods = sorted(set(rows["method"].dropna().astype(str)))
        points = sorted(set(rows["point"]), key=_point_order)
        # a budget run of such a method (compression 2 for 2:4) is still its one sparsity
        sparsities = set(pd.to_numeric(rows["target_sparsity"], errors="coerce").dropna())
        fixed = bool(methods and all(fixed_sparsity(m) for m in methods)
                     and len(sparsities) == 1 and rows["channel_sparsity"].isna().all())
        if fixed:
            fixed_at |= sparsities
        series[name] = {"methods": methods, "points": points, "count": len(points),
                        "fixed_sparsity": fixed}
    data = {"asked": MIN_POINTS, "series": series}
    if not series:
        return Item("operating_points", False, "no pruned runs", data)
    exempt = [n for n, s in series.items() if s["fixed_sparsity"]]
    counted = {n: s for n, s in series.items() if not s["fixed_sparsity"]}
    short = {n: s for n, s in counted.items() if s["count"] < MIN_POINTS}
    parts = []
    if short:
        by_points: dict[tuple, list[str]] = {}
        for name, s in short.items():
            by_points.setdefault(tuple(s["points"]), []).append(name)
        for points, names in sorted(by_points.items(), key=lambda kv: (len(kv[0]), kv[0])):
            parts.append(f"{_plural(len(points), 'operating point')} ({_point_text(points)}):"
                         f" {_names(names)}")
    elif counted:
        fewest = min(s["count"] for s in counted.values())
        parts.append(f"{_plural(len(counted), 'series')} with at least {MIN_POINTS} "
                     f"operating points (fewest {fewest})")
    else:
        parts.append("no pruned series other than ones whose method fixes its sparsity")
    if exempt:
        methods = sorted({m for n in exempt for m in series[n]["methods"]})
        at = ", ".join(_number(x) for x in sorted(fixed_at))
        parts.append(f"exempt: {_names(exempt)}, 1 point ({at}): method "
                     f"{', '.join(methods)} fixes its sparsity")
    met = bool(counted) and not short
    detail = "; ".join(parts) + ("" if met else f"; {MIN_POINTS} asked")
    return Item("operating_points", met, detail, data)


def _point_order(point: str) -> tuple:
    """Weight sparsities, then channel fractions, each ascending, then budgets by kind and
    value."""
    kind, value = (f"~{point.split('=', 1)[0]}", point.split("=", 1)[1].split("@", 1)[0]) \
        if _is_budget(point) else (point[0], point[1:])
    try:
        number = float(value)
    except ValueError:
        number = math.inf
    return (kind != "s", kind, number, point)


def _range(values: pd.Series) -> str:
    finite = values[values.notna()]
    lo, hi = finite.min(), finite.max()
    return f"{lo:.3g}×" if lo == hi else f"{lo:.3g}–{hi:.3g}×"


def compression_and_speedup(grid: pd.DataFrame, in_tables: bool = True) -> Item:
    """`in_tables`: the runs table has the two columns (else they were computed here)."""
    pruned = _pruned(grid)
    points = sorted(set(pruned["grid_point"]))
    missing = {c: _missing_points(pruned, c) for c in ("compression_ratio",
                                                       "theoretical_speedup")}
    data = {"grid_points": len(points),
            "missing": missing,
            "compression_ratio": _bounds(_column(pruned, "compression_ratio")),
            "theoretical_speedup": _bounds(_column(pruned, "theoretical_speedup"))}
    if not points:
        return Item("compression_and_speedup", False, "no pruned runs", data)
    parts = []
    for column, what, why in (
            ("compression_ratio", "compression ratio", "no param_reduction"),
            ("theoretical_speedup", "theoretical speed-up",
             "no benchmark: macs_effective missing")):
        if missing[column]:
            parts.append(f"{what} missing at {len(missing[column])} of {len(points)} pruned "
                         f"grid points ({why}: {_names(missing[column])})")
    if parts:
        return Item("compression_and_speedup", False, "; ".join(parts), data)
    detail = (f"compression {_range(_column(pruned, 'compression_ratio'))} (unpruned / nonzero "
              f"params), theoretical speed-up {_range(_column(pruned, 'theoretical_speedup'))} "
              f"(unpruned / effective MACs) at all {len(points)} pruned grid points " +
              ("(columns compression_ratio, theoretical_speedup)" if in_tables else
               "(computed from param_reduction, macs_reduction and macs_effective: these "
               "tables predate the columns)"))
    return Item("compression_and_speedup", True, detail, data)


def _bounds(values: pd.Series) -> list[float] | None:
    finite = values[values.notna()]
    return None if finite.empty else [float(finite.min()), float(finite.max())]


def top1_and_top5(grid: pd.DataFrame) -> Item:
    points = sorted(set(grid["grid_point"]))
    absent = [c for c in ("top1", "top5") if c not in grid]
    missing = {c: _missing_points(grid, c) for c in ("top1", "top5") if c in grid}
    data = {"grid_points": len(points), "absent_columns": absent, "missing": missing}
    parts = [f"no {c.replace('top', 'top-')} column" for c in absent]
    parts += [f"{c.replace('top', 'top-')} missing at {len(m)} of {len(points)} grid points "
              f"({_names(m)})" for c, m in missing.items() if m]
    if parts:
        return Item("top1_and_top5", False, "; ".join(parts), data)
    return Item("top1_and_top5", True,
                f"top-1 and top-5 at all {len(points)} grid points", data)


def dense_control(grid: pd.DataFrame) -> Item:
    dense = grid[grid["series"] == DENSE_LABEL]
    seeds = sorted(int(s) for s in dense["seed"].dropna().unique()) if "seed" in dense else []
    top1 = _column(dense, "top1").mean()
    data = {"runs": len(dense), "seeds": seeds,
            "top1_mean": None if math.isnan(top1) else float(top1)}
    if dense.empty:
        return Item("dense_control", False, "no dense (unpruned) runs in the study", data)
    accuracy = "" if math.isnan(top1) else f", mean top-1 {100 * top1:.2f} %"
    return Item("dense_control", True,
                f"dense: {_plural(len(dense), 'run')} (seeds "
                f"{', '.join(map(str, seeds))}){accuracy}", data)


def seeds(grid: pd.DataFrame) -> Item:
    if "seed" in grid:
        counts = grid.groupby("grid_point")["seed"].nunique()
    else:
        counts = pd.Series(0, index=sorted(set(grid["grid_point"])))
    data = {"asked": MIN_SEEDS, "grid_points": len(counts),
            "seeds": {p: int(n) for p, n in counts.items()}}
    if counts.empty:
        return Item("seeds", False, "no runs", data)
    fewest, most = int(counts.min()), int(counts.max())
    if fewest >= MIN_SEEDS:
        spread = f"{fewest}" if fewest == most else f"{fewest}–{most}"
        return Item("seeds", True, f"{spread} seeds at all {len(counts)} grid points", data)
    short = sorted(counts.index[counts < MIN_SEEDS])
    data["short"] = short
    if len(short) == len(counts) and fewest == most:
        detail = f"{_plural(fewest, 'seed')} at all {len(counts)} grid points"
    else:
        detail = (f"fewer than {MIN_SEEDS} seeds at {len(short)} of {len(counts)} grid points, "
                  f"fewest {fewest} ({_names(short)})")
    return Item("seeds", False, f"{detail}; {MIN_SEEDS} asked", data)


def shared_baselines(grid: pd.DataFrame, figures: Collection[str] | None) -> Item:
    pruned = _pruned(grid)
    names = sorted(set(pruned["series"]))
    has_dense = bool((grid["series"] == DENSE_LABEL).any())
    plain = pruned[pruned["control"].isna()] if "control" in pruned else pruned
    baselines = sorted(set(plain.loc[plain["method"].isin(MAGNITUDE_BASELINES), "series"]))
    unplaced = {}
    for figure, column in SHARED_FIGURES.items():
        placed = _column(pruned, column).notna().groupby(pruned["series"]).any()
        unplaced[figure] = sorted(placed.index[~placed])
    absent = [] if figures is None else [f for f in SHARED_FIGURES if f not in figures]
    data = {"figures": list(SHARED_FIGURES), "absent_figures": absent, "series": names,
            "dense": has_dense, "magnitude_baselines": baselines, "unplaced": unplaced}
    parts = []
    if not names:
        parts.append("no pruned runs")
    if not has_dense:
        parts.append("no dense control to compare against")
    if names and not baselines:
        parts.append(f"no magnitude-pruning baseline ({', '.join(MAGNITUDE_BASELINES)})")
    parts += [f"figure {f} not drawn" for f in absent]
    parts += [f"{_names(u)} not in {f} (no {SHARED_FIGURES[f]})"
              for f, u in unplaced.items() if u]
    if parts:
        return Item("shared_baselines", False, "; ".join(parts), data)
    methods = sorted(set(plain.loc[plain["series"].isin(baselines), "method"]))
    return Item("shared_baselines", True,
                f"all {_plural(len(names), 'series')} in {' and '.join(SHARED_FIGURES)}, "
                f"against the dense control and magnitude pruning ({', '.join(methods)})",
                data)


# ---------------------------------------------------------------- per study, all studies


def study_checklist(runs: pd.DataFrame, study: str,
                    fixed_sparsity: Callable[[str], bool] | None = None,
                    figures: Collection[str] | None = None) -> list[Item]:
    """The six requests for `study`, in the paper's order, from the runs table (`runs.csv`:
    one row per run). `fixed_sparsity(method)` says whether a method fixes its sparsity
    through its options (default: the method registry); `figures` are the names (of `PLOTS`)
    of the study's figures that exist (None: not checked)."""
    fixed_sparsity = fixed_sparsity or registry_fixes_sparsity
    rows = runs[runs["study"] == study]
    in_tables = {"compression_ratio", "theoretical_speedup"} <= set(rows.columns)
    if not in_tables:
        rows = add_ratios(rows)  # a table written before the columns existed
    grid = _grid(rows)
    return [
        operating_points(grid, fixed_sparsity),
        compression_and_speedup(grid, in_tables),
        top1_and_top5(grid),
        dense_control(grid),
        seeds(grid),
        shared_baselines(grid, figures),
    ]


def checklist_data(runs: pd.DataFrame, fixed_sparsity: Callable[[str], bool] | None = None,
                   figures: Callable[[str], Collection[str]] | None = None) -> dict:
    """The checklist of every study in `runs` as JSON-able data: {"paper", "asked",
    "studies": {study: {"met": all met, "unmet": [keys], "items": [...]}}};
    `figures(study)` gives the names of a study's figures that exist."""
    out = {"paper": PAPER, "asked": {"operating_points": MIN_POINTS, "seeds": MIN_SEEDS,
                                     "magnitude_baselines": list(MAGNITUDE_BASELINES),
                                     "shared_figures": list(SHARED_FIGURES)},
           "studies": {}}
    for study in studies(runs):
        items = study_checklist(runs, study, fixed_sparsity,
                                None if figures is None else figures(study))
        out["studies"][study] = {
            "met": all(i.met for i in items),
            "unmet": [i.key for i in items if not i.met],
            "items": [i.as_json(n) for n, i in enumerate(items, 1)],
        }
    return out


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def checklist_markdown(study_data: Mapping[str, Any], data_link: str | None = None) -> str:
    """One study's checklist as a markdown table with a note (from `checklist_data`)."""
    lines = ["| # | Request | Met | What the data show |", "|--:|:--|:--|:--|"]
    for item in study_data["items"]:
        lines.append(f"| {item['number']} | {_cell(item['request'])} | "
                     f"{'yes' if item['met'] else '**no**'} | {_cell(item['detail'])} |")
    unmet = len(study_data["unmet"])
    verdict = ("meets all six requests" if not unmet
               else f"misses {unmet} of the six requests")
    where = f" [{Path(data_link).name}]({data_link}) has the same as data." if data_link else ""
    note = (f"*The requests of {PAPER}, checked against this study's runs: it {verdict}. A "
            "series is a method with its recovery or control; a grid point is one series at "
            "one target. A method whose options fix its sparsity (N:M) is exempt from the "
            f"operating-point count.{where}*\n")
    return "\n".join(lines) + "\n\n" + note


def write_checklist(data: Mapping[str, Any], path: Path) -> Path:
    """Write `checklist_data`'s result to `path` atomically (sorted keys, no timestamps)."""
    return atomic_write_json(path, data)

