"""Figures per study: accuracy and its loss against sparsity, accuracy against the parameters
and MACs left, parameters left, accuracy against measured MACs and latency (Pareto fronts),
training curves, lottery tickets (Frankle & Carbin's two curves: test accuracy and the
early-stopping iteration against the weights remaining, tickets beside their reinitialised
controls) and methods at equal cost.

A study has only the figures that say something (`names.figure_names`): the workflow lists
them from the study's declaration (`prunebench.plan.study_figures`), and `write_plots`
without `figures` from the tables (`drawable_figures`). A figure asked for whose data the
tables lack (no unstructured runs for a sparsity axis, no lottery tickets, no benchmark
results, no history.csv, no budget runs) is refused with a ConfigError that says what is
missing, never drawn as an empty frame.

The sparsity-axis figures show the dense model and the unstructured methods only: a
structured method's target is a fraction of channels, not a weight sparsity. The
parameter, MAC and Pareto figures put every method, structured or not, on one measured axis.

Accuracy axes zoom to where the methods differ (`_zoom_accuracy`): they span the dense model
and every point within COLLAPSE_PP of the best one; a collapsed point further down (a model
at chance accuracy) is drawn as a downward triangle on the lower edge in its series'
colour, with its true value written above it, and the legend says so.

Every series (the `series` column: "mag", "mag+distill", "lottery_reinit") has one colour
and marker (`series_styles`), the same in every figure of a study, and no two series share
both; up to 20 series no two share a colour, and black is the dense model's alone. Lines,
bars and markers are one per series; the lottery figure pairs tickets and controls by
`label`, `recovery` and `control`.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot), so nothing depends on
a global backend or figure registry; PNGs are rendered by Agg. Each `*_figure` function
returns its Figure, so tests can inspect the lines it drew. The figure names, in output
order, are `PLOTS` (defined in `names`, which the workflow imports without pandas or
matplotlib).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import offset_copy

from prunebench.analysis.aggregate import (
    MACS_PER_M,
    at_budget,
    has_lottery_runs,
    latency_batches,
    ordered_series,
    studies,
    ticket_controls,
)
from prunebench.analysis.names import (
    BUDGET_PLOTS,
    DENSE_LABEL,
    PLOTS,
    REINIT,
    TICKET,
    figure_names,
)
from prunebench.budgets import KINDS as BUDGET_KINDS
from prunebench.errors import ConfigError
from prunebench.io import atomic_write

DPI = 120
FIGSIZE = (6.4, 4.2)
LEGEND_ONE_COLUMN = 12  # more legend entries than this: a wider figure, two columns
COLLAPSE_PP = 25.0  # a model this far below the best one has collapsed (chance accuracy)
ZOOM_PAD = 0.08  # an accuracy axis reaches this share of its span beyond the points kept
ZOOM_MIN_PAD = 0.5  # ... and at least this many percentage points
CLIPPED_BAND = 0.12  # share of a zoomed axis kept free at its foot for collapsed points
CLIPPED_NEAR = 0.05  # collapsed points closer than this (axes width) stack their values
DENSE_COLOR = "black"
DENSE_MARKER = "*"
# Filled markers that tell series apart where their lines meet; not "v", the off-axis
# marker, nor "*", the dense model's. 11 is prime to the 21 of `series_styles`' step.
MARKERS = "osD^PXp<>hd"
CLIPPED_MARKER = "v"
CLIPPED_LEGEND = "collapsed: below the axis (value written above)"
EFFECTIVE_LEGEND = "hollow: effective MACs (zeros skipped)"
FRONT_COLOR = "grey"
STRUCTURED_LINESTYLE = "-."  # tells channel-pruned methods apart where all methods meet


def _palette() -> tuple[tuple[float, ...], ...]:
    """20 qualitative colours, none grey or black: tab20's nine strong hues (its grey left
    out), two dark ones of tab20b (indigo, moss), then tab20's nine light hues."""
    tab20, tab20b = matplotlib.colormaps["tab20"].colors, matplotlib.colormaps["tab20b"].colors
    grey = 7  # tab20's pair 7 is grey and light grey
    strong = [c for i, c in enumerate(tab20[0::2]) if i != grey]
    light = [c for i, c in enumerate(tab20[1::2]) if i != grey]
    return tuple(tuple(c) for c in [*strong, tab20b[0], tab20b[4], *light])


PALETTE = _palette()


class _Missing(ConfigError):
    """A figure asked for whose data the tables lack: it would say only that it is empty."""


def _lacking(study: str, figure: str, what: str, source: str = "the tables") -> _Missing:
    return _Missing(f"study {study!r}: figure {figure} needs {what}, which {source} lack (a "
                    "study gets only the figures its runs fill: "
                    "prunebench.analysis.names.figure_names)")


# ---------------------------------------------------------------- styles


def _colour(i: int) -> tuple[float, ...]:
    """The i-th series' colour (dense apart): the palette in turn; past every (palette
    colour, marker) pair, fresh hues at golden-ratio steps round the colour wheel."""
    if i < len(PALETTE) * len(MARKERS):
        return PALETTE[i % len(PALETTE)]
    return tuple(float(c) for c in matplotlib.colormaps["hsv"]((i * 0.6180339887) % 1.0)[:3])


def series_styles(names: Iterable[str]) -> dict[str, dict]:
    """{series: {"color", "marker"}} for every series in `names`, by its place in
    `ordered_series` (dense first, then alphabetically), so every figure of a study that is
    given the study's series draws each one alike. The i-th series after dense gets
    PALETTE[i % 20] and MARKERS[(i + i // 20) % 11]: up to 20 series every colour differs;
    up to 220 every (colour, marker) pair does (a colour comes back every 20 series, 21
    marker steps later, and 21 is prime to 11); past that each has a colour of its own.
    Dense is black with a star, a colour no other series has."""
    methods = [x for x in ordered_series(names) if x != DENSE_LABEL]
    n = len(PALETTE)
    return {DENSE_LABEL: {"color": DENSE_COLOR, "marker": DENSE_MARKER},
            **{name: {"color": _colour(i), "marker": MARKERS[(i + i // n) % len(MARKERS)]}
               for i, name in enumerate(methods)}}


def _study_styles(rows: pd.DataFrame, styles: dict[str, dict] | None) -> dict[str, dict]:
    return styles if styles is not None else series_styles(rows["series"])


# ---------------------------------------------------------------- axes helpers


def _log_density(s):
    """Sparsity -> -log10(density): 0.9 -> 1, 0.99 -> 2, so high sparsities spread out."""
    return -np.log10(np.clip(1.0 - np.asarray(s, dtype=float), 1e-9, None))


def _inverse_log_density(y):
    return 1.0 - np.power(10.0, -np.asarray(y, dtype=float))


def _fmt_sparsity(s: float) -> str:
    return f"{s:.3f}".rstrip("0").rstrip(".") if s else "0"


def _sparsity_axis(ax: Axes, ticks: Sequence[float], label: str) -> None:
    """A log-density x axis with ticks at the grid sparsities."""
    ticks = sorted({float(t) for t in ticks})
    ax.set_xscale("function", functions=(_log_density, _inverse_log_density))
    if ticks:
        lo, hi = _log_density(min(ticks)), _log_density(max(ticks))
        pad = max(0.08 * (hi - lo), 0.1)
        ax.set_xlim(_inverse_log_density(max(lo - pad, 0.0)), _inverse_log_density(hi + pad))
    ax.set_xticks(ticks, [_fmt_sparsity(t) for t in ticks])  # none: no made-up sparsities
    ax.minorticks_off()
    ax.set_xlabel(label)


def _fraction_axis(ax: Axes, fractions: Sequence[float], label: str) -> None:
    """A log x axis of a remaining fraction, decreasing to the right like the sparsity axes
    (more pruning further right); the unpruned model's 100 % is always in view."""
    lo = max(min([*fractions, 1.0]), 1e-9)
    hi = max([*fractions, 1.0])
    ax.set_xscale("log")
    ax.set_xlim(hi * 1.15, lo / 1.15)
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g} %"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)


def _cost_axis(ax: Axes) -> None:
    """A log x axis of a measured cost with plain-number ticks at 1, 2, 5 × 10^k (a span of
    less than a decade gets no crowded minor labels), padded so edge markers stay whole."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(0.1)


Point = tuple[float, float, str]  # (x, y, series) of one drawn mean


def _points(x: Iterable[float], y: Iterable[float], series: str) -> list[Point]:
    return [(float(a), float(b), series) for a, b in zip(x, y)]


def _zoom_accuracy(ax: Axes, points: Sequence[Point], styles: dict[str, dict],
                   keep: Sequence[float] = (), bounds: tuple[float, float] | None = (0.0, 100.0),
                   ) -> list[Point]:
    """Zoom the y axis (an accuracy, in %, or its change in points) to where the methods
    differ: it spans `keep` (the dense model's band) and every point within COLLAPSE_PP of
    the highest value, padded by ZOOM_PAD of that span (ZOOM_MIN_PAD at least) and kept
    within `bounds`. A collapsed point further down would squash every other line into a
    band at the top; it is drawn instead as a downward triangle on the lower edge, in its
    series' colour, with its true value written above it (points close in x stand side by
    side, their values stacked), in a band of CLIPPED_BAND of the axis kept free for them;
    the legend gets one entry, CLIPPED_LEGEND. The lines keep their true values and leave the axes through the
    bottom. Returns the clipped points. Call it once the x axis is set."""
    values = np.array([y for _, y, _ in points] + list(keep), dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return []
    kept = values[values >= values.max() - COLLAPSE_PP]
    lo, hi = float(kept.min()), float(kept.max())
    pad = max(ZOOM_PAD * (hi - lo), ZOOM_MIN_PAD)
    bottom, top = lo - pad, hi + pad
    if bounds is not None:
        bottom = max(bottom, bounds[0] - ZOOM_MIN_PAD)
        top = min(top, bounds[1] + ZOOM_MIN_PAD)
    if any(np.isfinite(y) and y < bottom for _, y, _ in points):
        bottom -= CLIPPED_BAND * (top - bottom)
    ax.set_ylim(bottom, top)
    clipped = [p for p in points if np.isfinite(p[1]) and p[1] < bottom]
    ax.get_xlim()  # settle the x axis: values are stacked by their place along it
    to_axes = ax.transData + ax.transAxes.inverted()
    placed: list[tuple[float, int]] = []  # (x in axes fractions, stack level)
    for x, y, series in sorted(clipped, key=lambda p: (p[0], -p[1])):
        color = styles[series]["color"]
        where = float(to_axes.transform((x, bottom))[0])
        near = {level for other, level in placed if abs(other - where) < CLIPPED_NEAR}
        level = min(set(range(len(near) + 1)) - near)
        placed.append((where, level))
        shift = 6 * level  # points: several at one place stand side by side
        ax.plot([x], [bottom], linestyle="none", marker=CLIPPED_MARKER, markersize=8,
                color=color, clip_on=False, zorder=5, label=f"_{series} below the axis",
                transform=offset_copy(ax.transData, ax.figure, x=shift, units="points"))
        ax.annotate(f"{y:.1f}", xy=(x, bottom), xytext=(shift, 6 + 8 * level),
                    textcoords="offset points", ha="center", va="bottom", fontsize="x-small",
                    color=tuple(0.65 * c for c in to_rgb(color)),
                    annotation_clip=False)
    if clipped:
        ax.plot([], [], linestyle="none", marker=CLIPPED_MARKER, color=FRONT_COLOR,
                label=CLIPPED_LEGEND)
    return clipped


def _new_figure(title: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="tight")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _method_legend(fig: Figure, ax: Axes) -> None:
    """The legend of the methods, beside the axes: inside them it would cover the data. Past
    LEGEND_ONE_COLUMN entries (a study of many methods and their distilled variants) the
    figure grows and the legend takes two columns, so that every entry stays in the image."""
    entries = len(ax.get_legend_handles_labels()[0])
    if entries > LEGEND_ONE_COLUMN:
        rows = -(-entries // 2)
        fig.set_size_inches(FIGSIZE[0] + 3.2, max(FIGSIZE[1] + 1.0, 0.22 * rows + 1.0))
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small",
              ncol=1 if entries <= LEGEND_ONE_COLUMN else 2)


def _std(values: pd.Series) -> np.ndarray:
    """Std for a band: a single seed has no spread (NaN) and gets none drawn."""
    return values.fillna(0.0).to_numpy(dtype=float)


def _methods(summary: pd.DataFrame) -> list[str]:
    return [x for x in ordered_series(summary["series"]) if x != DENSE_LABEL]


def _dense(summary: pd.DataFrame) -> pd.Series | None:
    rows = summary[summary["series"] == DENSE_LABEL]
    return rows.iloc[0] if len(rows) else None


def _unstructured(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with a weight-sparsity target (dense included): the ones a sparsity axis can
    place."""
    return rows[rows["target_sparsity"].notna()]


def _grid_sparsities(summary: pd.DataFrame) -> list[float]:
    return sorted(summary.loc[summary["series"] != DENSE_LABEL, "target_sparsity"].unique())


def _dense_reference(ax: Axes, rows: pd.DataFrame) -> tuple[float, ...]:
    """The dense model's top-1 as a dashed horizontal line with its ±std band; returns the
    band's edges (what an accuracy axis keeps in view), none without a dense row."""
    dense = _dense(rows)
    if dense is None:
        return ()
    mean, std = 100 * dense["top1_mean"], 100 * _std(pd.Series([dense["top1_std"]]))[0]
    ax.axhline(mean, color=DENSE_COLOR, linestyle="--", linewidth=1.2,
               label=f"{DENSE_LABEL} (n={int(dense['n'])})")
    if std > 0:
        ax.axhspan(mean - std, mean + std, color=DENSE_COLOR, alpha=0.08, linewidth=0)
    return (mean - std, mean + std)


def _accuracy_line(ax: Axes, x: np.ndarray, m: pd.DataFrame, label: str,
                   style: dict) -> list[Point]:
    """Mean top-1 (%) of one method against `x`, with a ±std band; returns its points."""
    y, err = 100 * m["top1_mean"].to_numpy(dtype=float), 100 * _std(m["top1_std"])
    ax.plot(x, y, label=label, **style)
    ax.fill_between(x, np.clip(y - err, 0, 100), np.clip(y + err, 0, 100),
                    color=style["color"], alpha=0.15, linewidth=0)
    return _points(x, y, label)


# ---------------------------------------------------------------- figures


def accuracy_figure(summary: pd.DataFrame, study: str,
                    styles: dict[str, dict] | None = None) -> Figure:
    """Top-1 (%) against achieved weight sparsity: one line per unstructured method with a
    ±std band, and the dense model as a dashed horizontal line with its band; the accuracy
    axis zoomed (`_zoom_accuracy`)."""
    rows = summary[summary["study"] == study]
    styles = _study_styles(rows, styles)
    rows = _unstructured(rows)
    methods = _methods(rows)
    if not methods:
        raise _lacking(study, "accuracy_vs_sparsity", "runs of an unstructured method")
    fig, ax = _new_figure(f"{study}: test top-1 accuracy vs. sparsity")
    keep = _dense_reference(ax, rows)
    points = []
    for name in methods:
        m = rows[rows["series"] == name].sort_values("target_sparsity")
        points += _accuracy_line(ax, m["weight_sparsity_mean"].to_numpy(dtype=float), m, name,
                                 styles[name])
    _sparsity_axis(ax, _grid_sparsities(rows), "achieved weight sparsity (log-density scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    _zoom_accuracy(ax, points, styles, keep)
    _method_legend(fig, ax)
    return fig


def delta_figure(summary: pd.DataFrame, study: str,
                 styles: dict[str, dict] | None = None) -> Figure:
    """Top-1 difference to dense (percentage points) per method, grouped by target sparsity;
    error bars are the method's std over seeds, the method's marker sits on each bar's end
    (bars only have a colour); the axis zoomed as an accuracy axis, zero kept in view."""
    rows = summary[summary["study"] == study]
    styles = _study_styles(rows, styles)
    rows = _unstructured(rows)
    methods = _methods(rows)
    if not methods:
        raise _lacking(study, "delta_vs_dense", "runs of an unstructured method")
    grid = _grid_sparsities(rows)
    fig, ax = _new_figure(f"{study}: top-1 change vs. dense")
    width = 0.8 / len(methods)
    points = []
    for i, name in enumerate(methods):
        m = rows[rows["series"] == name].set_index("target_sparsity").reindex(grid)
        pos = np.arange(len(grid)) - 0.4 + width * (i + 0.5)
        delta = 100 * m["delta_top1_vs_dense"].to_numpy(dtype=float)
        style = styles[name]
        ax.bar(pos, delta, width, yerr=100 * _std(m["top1_std"]), capsize=3,
               color=style["color"], label=f"_{name}")
        ax.plot(pos, delta, linestyle="none", marker=style["marker"], markersize=4,
                color=style["color"], label=name)
        points += _points(pos, delta, name)
    ax.axhline(0.0, color=DENSE_COLOR, linewidth=1.0)
    ax.set_xticks(np.arange(len(grid)), [_fmt_sparsity(s) for s in grid])
    ax.set_xlabel("target weight sparsity")
    ax.set_ylabel("Δ top-1 vs. dense (percentage points)")
    _zoom_accuracy(ax, points, styles, keep=(0.0,), bounds=(-100.0, 100.0))
    _method_legend(fig, ax)
    return fig


def params_figure(summary: pd.DataFrame, study: str,
                  styles: dict[str, dict] | None = None) -> Figure:
    """Fraction of all parameters that are nonzero (biases included) per method, against the
    target sparsity, with 1 − sparsity (prunable weights only) as reference."""
    rows = summary[summary["study"] == study]
    styles = _study_styles(rows, styles)
    rows = _unstructured(rows)
    methods = _methods(rows)
    if not methods:
        raise _lacking(study, "params_remaining", "runs of an unstructured method")
    grid = _grid_sparsities(rows)
    fig, ax = _new_figure(f"{study}: parameters remaining")
    ax.axhline(100.0, color=DENSE_COLOR, linestyle="--", linewidth=1.2, label=DENSE_LABEL)
    ax.plot(grid, [100 * (1 - s) for s in grid], color=FRONT_COLOR, linestyle=":",
            label="1 − target sparsity")
    for name in methods:
        m = rows[rows["series"] == name].sort_values("target_sparsity")
        ax.plot(m["target_sparsity"], 100 * m["params_remaining_frac_mean"], label=name,
                **styles[name])
    _sparsity_axis(ax, grid, "target weight sparsity (log-density scale)")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("nonzero / total parameters (%)")
    _method_legend(fig, ax)
    return fig


def _accuracy_vs_remaining(summary: pd.DataFrame, study: str, reduction: str, title: str,
                           xlabel: str, styles: dict[str, dict] | None) -> Figure:
    """Top-1 (%) of every method against `1 − <reduction>_mean` (what is left of the unpruned
    model), so structured, unstructured and distilled methods meet on one measured axis;
    structured methods are dash-dotted, the accuracy axis zoomed."""
    rows = summary[summary["study"] == study]
    styles = _study_styles(rows, styles)
    fig, ax = _new_figure(title)
    keep = _dense_reference(ax, rows)
    column = f"{reduction}_mean"
    fractions, points = [], []
    for name in _methods(rows):
        m = rows[rows["series"] == name].dropna(subset=[column])
        m = m.assign(_left=1.0 - m[column]).sort_values("_left", ascending=False)
        style = dict(styles[name])
        if m["channel_sparsity"].notna().any():
            style["linestyle"] = STRUCTURED_LINESTYLE
        points += _accuracy_line(ax, m["_left"].to_numpy(dtype=float), m, name, style)
        fractions += m["_left"].tolist()
    _fraction_axis(ax, fractions, xlabel)
    ax.set_ylabel("test top-1 accuracy (%)")
    _zoom_accuracy(ax, points, styles, keep)
    _method_legend(fig, ax)
    return fig


def accuracy_vs_params_figure(summary: pd.DataFrame, study: str,
                              styles: dict[str, dict] | None = None) -> Figure:
    """Top-1 against the fraction of the unpruned model's parameters that are left (nonzero
    and not removed): methods compared at equal size, whatever they prune."""
    return _accuracy_vs_remaining(
        summary, study, "param_reduction", f"{study}: test top-1 vs. parameters remaining",
        "parameters remaining (fraction of unpruned, log scale)", styles)


def accuracy_vs_macs_figure(summary: pd.DataFrame, study: str,
                            styles: dict[str, dict] | None = None) -> Figure:
    """Top-1 against the fraction of the dense MACs left on dense kernels: masked methods
    stay at 100 %, only removed channels save compute."""
    return _accuracy_vs_remaining(
        summary, study, "macs_reduction", f"{study}: test top-1 vs. MACs remaining",
        "MACs remaining on dense kernels (fraction of unpruned, log scale)", styles)


def pareto_front(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The upper-left envelope of the points, by increasing cost `x`: each point more accurate
    than every point that costs as much or less (at equal cost only the most accurate)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    front, best = [], -np.inf
    for i in np.lexsort((-y, x)):
        if y[i] > best:
            front.append(i)
            best = y[i]
    return x[front], y[front]


def _point_style(styles: dict[str, dict], name: str) -> dict:
    """Markers only, one per series; the dense model as a larger star."""
    style = styles[name]
    dense = name == DENSE_LABEL
    return {"color": style["color"], "marker": style.get("marker", DENSE_MARKER),
            "markersize": 12 if dense else 7, "linestyle": "none"}


def _pareto_rows(summary: pd.DataFrame, study: str, column: str | None) -> pd.DataFrame:
    rows = summary[summary["study"] == study]
    return rows.dropna(subset=[column, "top1_mean"]) if column in rows else rows.iloc[:0]


def _pareto_figure(summary: pd.DataFrame, study: str, figure: str, column: str | None,
                   factor: float, title: str, xlabel: str, styles: dict[str, dict] | None,
                   extra: Callable[[Axes, pd.DataFrame, dict], list[Point]] | None = None,
                   ) -> Figure:
    """Mean top-1 (%) of every benchmarked model against `factor` × `column` on a log axis,
    one marker per method, the Pareto front as a thin grey step line, and what `extra` draws
    on the same rows before the legend is made (its points join the accuracy zoom). Without
    benchmark results (no `column`, or no values in it) the figure is refused."""
    rows = summary[summary["study"] == study]
    styles = _study_styles(rows, styles)
    drawn = _pareto_rows(summary, study, column)
    if drawn.empty:
        raise _lacking(study, figure, "benchmark results")
    fig, ax = _new_figure(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test top-1 accuracy (%)")
    front_x, front_y = pareto_front(factor * drawn[column], 100 * drawn["top1_mean"])
    ax.step(front_x, front_y, where="post", color=FRONT_COLOR, linewidth=0.8,
            label="Pareto front")
    points = []
    for name in ordered_series(drawn["series"]):
        m = drawn[drawn["series"] == name]
        x, y = factor * m[column], 100 * m["top1_mean"]
        ax.plot(x, y, label=name, **_point_style(styles, name))
        points += _points(x, y, name)
    if extra is not None:
        points += extra(ax, drawn, styles)
    _cost_axis(ax)
    _zoom_accuracy(ax, points, styles)
    _method_legend(fig, ax)
    return fig


def _effective_macs(ax: Axes, rows: pd.DataFrame, styles: dict[str, dict]) -> list[Point]:
    """Hollow markers at the effective MACs (zero weights skipped) of the masked methods: what
    sparse kernels could at best save, next to what dense kernels cost. Labels starting with
    "_" keep them out of the legend, which gets one grey entry for all of them."""
    masked = rows[(rows["series"] != DENSE_LABEL) & rows["target_sparsity"].notna()]
    if "macs_effective_mean" not in masked or masked["macs_effective_mean"].isna().all():
        return []
    masked = masked.dropna(subset=["macs_effective_mean"])
    points = []
    for name in ordered_series(masked["series"]):
        m = masked[masked["series"] == name]
        x, y = m["macs_effective_mean"] / MACS_PER_M, 100 * m["top1_mean"]
        ax.plot(x, y, label=f"_{name} effective", markerfacecolor="none",
                **_point_style(styles, name))
        points += _points(x, y, name)
    ax.plot([], [], color=FRONT_COLOR, marker="o", markerfacecolor="none", linestyle="none",
            label=EFFECTIVE_LEGEND)
    return points


def pareto_macs_figure(summary: pd.DataFrame, study: str,
                       styles: dict[str, dict] | None = None) -> Figure:
    """Top-1 against the MACs per sample on dense kernels (the Pareto front is over these):
    masked models stack at the dense model's cost; hollow markers show their effective MACs."""
    return _pareto_figure(summary, study, "pareto_macs", "macs_dense_mean", 1 / MACS_PER_M,
                          f"{study}: test top-1 vs. MACs (benchmark)",
                          "MACs per sample on dense kernels (M, log scale)", styles,
                          _effective_macs)


def _latency_column(summary: pd.DataFrame, study: str) -> tuple[pd.DataFrame, str | None, str]:
    """(rows, column, axis label) of the latency figure: the latency relative to the dense
    model's (1 / the paired speed-up) at the study's largest batch size where the benchmark
    recorded it, else the median latency on dense kernels (column None: no latency)."""
    rows = summary[summary["study"] == study]
    batches = latency_batches(rows)
    batch = f"{batches[-1]}" if batches else "the largest size"
    paired = f"speedup_vs_dense_b{batch}_mean"
    if paired in rows and rows[paired].notna().any():
        return (summary.assign(_relative_latency=1.0 / summary[paired]), "_relative_latency",
                f"latency at batch {batch} / dense model's (paired, log scale)")
    column = f"latency_dense_b{batches[-1]}_ms_mean" if batches else None
    return (summary, column,
            f"median latency per batch of {batch}, dense kernels (ms, log scale)")


def pareto_latency_figure(summary: pd.DataFrame, study: str,
                          styles: dict[str, dict] | None = None) -> Figure:
    """Top-1 against what each model costs on the hardware as it runs today, at the study's
    largest batch size on dense kernels: its latency relative to the dense model's, timed
    alternately in one process (1 / the paired speed-up), where the benchmark recorded it;
    otherwise the measured median latency."""
    rows, column, xlabel = _latency_column(summary, study)
    return _pareto_figure(rows, study, "pareto_latency", column, 1.0,
                          f"{study}: test top-1 vs. latency (benchmark)", xlabel, styles)


def read_history(run_dir: str | Path) -> pd.DataFrame | None:
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return None
    history = pd.read_csv(path)
    return history if {"epoch", "val_top1"} <= set(history.columns) and len(history) else None


def curve_runs(runs: pd.DataFrame, study: str) -> dict[str, pd.DataFrame]:
    """The runs whose curves are drawn: dense, and each unstructured method at its highest
    sparsity, by series."""
    rows = _unstructured(runs[runs["study"] == study])
    picked = {}
    for name in ordered_series(rows["series"]):
        m = rows[rows["series"] == name]
        picked[name] = m[m["target_sparsity"] == m["target_sparsity"].max()]
    return picked


def _histories(runs: pd.DataFrame, study: str, read: Callable[[str], pd.DataFrame | None],
               ) -> dict[str, tuple[pd.DataFrame, list[pd.DataFrame]]]:
    """{series: (its picked runs, their histories)} of the curve runs that have any."""
    found = {}
    for series, picked in curve_runs(runs, study).items():
        histories = [h for h in map(read, picked["run_dir"]) if h is not None]
        if histories:
            found[series] = (picked, histories)
    return found


def curves_figure(runs: pd.DataFrame, study: str,
                  read: Callable[[str], pd.DataFrame | None] = read_history,
                  styles: dict[str, dict] | None = None) -> Figure:
    """Validation top-1 per epoch, averaged over seeds (band: ±std), for dense and for each
    unstructured method at its highest target sparsity, each method with its marker on a
    few epochs. Not zoomed: early epochs are low by nature."""
    styles = _study_styles(runs[runs["study"] == study], styles)
    found = _histories(runs, study, read)
    if not found:
        raise _lacking(study, "training_curves", "a history.csv",
                       "the run directories of the dense model and the unstructured methods")
    fig, ax = _new_figure(f"{study}: validation accuracy during training")
    for series, (picked, histories) in found.items():
        per_epoch = pd.concat(histories).groupby("epoch")["val_top1"].agg(["mean", "std"])
        x = per_epoch.index.to_numpy(dtype=float)
        y, err = 100 * per_epoch["mean"].to_numpy(), 100 * _std(per_epoch["std"])
        sparsity = picked["target_sparsity"].iloc[0]
        dense = series == DENSE_LABEL
        name = series if dense else f"{series} @ {_fmt_sparsity(sparsity)}"
        style = styles[series]
        ax.plot(x, y, color=style["color"], label=name, linestyle="--" if dense else "-",
                marker=None if dense else style["marker"], markersize=4,
                markevery=max(1, len(x) // 6))
        ax.fill_between(x, y - err, y + err, color=style["color"], alpha=0.12, linewidth=0)
    _method_legend(fig, ax)
    ax.set_xlabel("epoch (of the run's own training or recovery)")
    ax.set_ylabel("validation top-1 accuracy (%)")
    return fig


def _lottery_lines(rows: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """{(ticket series, control): levels} of each ticket series (a lottery label, or a
    method's `+rewind` recovery) and its controls (the rows whose `control` is "ticket" and
    "reinit"), dense prepended at 100 % remaining."""
    lines = {}
    dense = rows[rows["series"] == DENSE_LABEL]
    tickets = rows[rows["control"] == TICKET]
    for series in sorted(set(tickets["series"])):
        levels = tickets[tickets["series"] == series]
        controls = ticket_controls(rows, levels.iloc[0])
        for control, line in ((TICKET, levels), (REINIT, controls)):
            if len(line):
                lines[(series, control)] = pd.concat([dense, line]).sort_values(
                    "target_sparsity")
    return lines


LOTTERY_PANELS = (("top1", 100.0, "test top-1 accuracy (%)"),
                  ("early_stop_iteration", 1.0, "early-stopping iteration (min. validation loss)"))


def lottery_figure(summary: pd.DataFrame, study: str,
                   styles: dict[str, dict] | None = None) -> Figure:
    """Test top-1 (left) and the early-stopping iteration, the iteration of minimum
    validation loss (right), against the percentage of weights remaining (log scale, falling
    to the right), mean ±std over seeds, for each ticket series (lottery labels, `+rewind`
    recoveries) and its random reinitialisation control (dashed, in its own series' style);
    both lines start at the dense model (100 %), and the accuracy axis is zoomed. Runs made
    before the early-stopping iteration was recorded get the accuracy panel alone."""
    rows = summary[summary["study"] == study]
    styles = _study_styles(rows, styles)
    lines = _lottery_lines(rows)
    if not lines:
        raise _lacking(study, "lottery_tickets", "lottery-ticket runs")
    panels = [p for p in LOTTERY_PANELS
              if any(f"{p[0]}_mean" in line and line[f"{p[0]}_mean"].notna().any()
                     for line in lines.values())]
    fig = Figure(figsize=(FIGSIZE[0] * (0.9 + 0.9 * len(panels)), FIGSIZE[1]), dpi=DPI,
                 layout="tight")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (metric, scale, ylabel) in zip(axes, panels):
        ax.grid(True, alpha=0.3)
        points = []
        for (series, control), line in lines.items():
            if f"{metric}_mean" not in line or line[f"{metric}_mean"].isna().all():
                continue
            own = line.loc[line["series"] != DENSE_LABEL, "series"].iloc[0]
            style = styles[own]
            x = 100 * (1.0 - line["weight_sparsity_mean"].to_numpy(dtype=float))
            y = scale * line[f"{metric}_mean"].to_numpy(dtype=float)
            err = scale * _std(line[f"{metric}_std"])
            reinit = control == REINIT
            ax.plot(x, y, color=style["color"], marker=style["marker"],
                    linestyle="--" if reinit else "-", markersize=4,
                    label=f"{series} (random reinit)" if reinit else f"{series} (ticket)")
            ax.fill_between(x, y - err, y + err, color=style["color"],
                            alpha=0.08 if reinit else 0.18, linewidth=0)
            points += _points(x, y, own)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        if metric == "top1":
            _zoom_accuracy(ax, points, styles)
        ax.legend(fontsize="small")
        ax.set_xlabel("weights remaining (%, log scale)")
        ax.set_ylabel(ylabel)
    fig.suptitle(f"{study}: lottery tickets against random reinitialisation")
    return fig


def equal_cost_figure(summary: pd.DataFrame, study: str,
                      styles: dict[str, dict] | None = None) -> Figure:
    """Top-1 (%) of every method at each budget point, one panel per budget kind (x: the
    budget's value), mean over seeds with ±std error bars, the dense model as the dashed
    line: methods side by side at equal cost, the accuracy axes zoomed. Methods at one
    budget value are spread a little along x (dodged) so that equal accuracies stay
    visible; the legend has its own panel on the right."""
    rows = at_budget(summary[summary["study"] == study], budget=True)
    everything = summary[summary["study"] == study]
    styles = _study_styles(everything, styles)
    kinds = [k for k in BUDGET_KINDS if (rows["budget_kind"] == k).any()]
    names = _methods(rows)
    if not kinds or not names:
        raise _lacking(study, "equal_cost", "budget runs")
    fig = Figure(figsize=(4.2 * len(kinds) + 2.6, FIGSIZE[1]), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(kinds) + 1, width_ratios=[4.2] * len(kinds) + [2.6])
    fig.suptitle(f"{study}: test top-1 at equal cost")
    for ax, kind in zip(axes, kinds):
        keep = _dense_reference(ax, everything)
        of_kind = rows[rows["budget_kind"] == kind]
        values = sorted(of_kind["budget_value"].unique())
        log_x = kind in ("compression", "latency")
        gaps = np.diff(np.log(values) if log_x else values) if len(values) > 1 else [0.0]
        width = 0.3 * (min(gaps) if len(values) > 1 else (0.2 if log_x else 0.05))
        points = []
        for i, name in enumerate(names):
            m = of_kind[of_kind["series"] == name].sort_values("budget_value")
            if m.empty:
                continue
            x = m["budget_value"].to_numpy(dtype=float)
            shift = width * ((i + 0.5) / len(names) - 0.5)
            x = x * np.exp(shift) if log_x else x + shift
            y, err = 100 * m["top1_mean"].to_numpy(dtype=float), 100 * _std(m["top1_std"])
            style = styles[name]
            ax.errorbar(x, y, yerr=err, label=name, capsize=3, color=style["color"],
                        marker=style.get("marker"), linestyle="-" if len(x) > 1 else "none")
            missed = _missed(m)
            if missed.any():  # a point some run did not reach: hollow, over the filled one
                ax.plot(x[missed], y[missed], linestyle="none", marker=style.get("marker"),
                        markerfacecolor="white", markeredgecolor=style["color"])
            points += _points(x, y, name)
        batches = sorted(of_kind["budget_batch_size"].dropna().unique())
        ax.set_xlabel(BUDGET_AXES[kind] + (f" (batch {', '.join(f'{b:g}' for b in batches)})"
                                           if batches else ""))
        if log_x:
            _cost_axis(ax)
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.set_ylabel("test top-1 (%)")
        ax.grid(True, alpha=0.3)
        _zoom_accuracy(ax, points, styles, keep)
    legend = axes[-1]
    legend.axis("off")
    entries: dict[str, Any] = {}
    for ax in axes[:-1]:
        entries.update(zip(*reversed(ax.get_legend_handles_labels())))
    legend.legend(list(entries.values()), list(entries.keys()), loc="center left",
                  fontsize="small", frameon=False)
    return fig


def _missed(rows: pd.DataFrame) -> np.ndarray:
    """Which budget points not every run met (within the budget's tolerance)."""
    if "budget_met_mean" not in rows:
        return np.zeros(len(rows), dtype=bool)
    return (rows["budget_met_mean"].to_numpy(dtype=float) < 1.0)


BUDGET_AXES = {
    "params": "parameters removed (fraction)",
    "compression": "compression (dense / nonzero parameters)",
    "macs": "MACs removed (fraction; nonzero-weight MACs for masks)",
    "latency": "measured speed-up asked for",
}


# ---------------------------------------------------------------- which figures, writing


# What draws each of PLOTS from the runs and summary without budget points, and the
# study's series styles: (runs, summary, study, styles) -> Figure.
FIGURES: dict[str, Callable[[pd.DataFrame, pd.DataFrame, str, dict], Figure]] = {
    "accuracy_vs_sparsity": lambda runs, summary, study, styles: accuracy_figure(
        summary, study, styles),
    "delta_vs_dense": lambda runs, summary, study, styles: delta_figure(summary, study, styles),
    "params_remaining": lambda runs, summary, study, styles: params_figure(
        summary, study, styles),
    "accuracy_vs_params": lambda runs, summary, study, styles: accuracy_vs_params_figure(
        summary, study, styles),
    "accuracy_vs_macs": lambda runs, summary, study, styles: accuracy_vs_macs_figure(
        summary, study, styles),
    "pareto_macs": lambda runs, summary, study, styles: pareto_macs_figure(
        summary, study, styles),
    "pareto_latency": lambda runs, summary, study, styles: pareto_latency_figure(
        summary, study, styles),
    "training_curves": lambda runs, summary, study, styles: curves_figure(
        runs, study, styles=styles),
    "lottery_tickets": lambda runs, summary, study, styles: lottery_figure(
        summary, study, styles),
}


def drawable_figures(runs: pd.DataFrame, summary: pd.DataFrame, study: str,
                     read: Callable[[str], pd.DataFrame | None] = read_history,
                     ) -> tuple[str, ...]:
    """The figures `study`'s tables can fill (`names.figure_names` of what they hold):
    unstructured runs, lottery tickets, training histories (`read` from the run
    directories), budget runs, benchmark results (MACs and latency)."""
    rows = summary[summary["study"] == study]
    native = at_budget(rows, budget=False)
    timed, latency, _ = _latency_column(native, study)
    return figure_names(
        unstructured=bool(_methods(_unstructured(native))),
        lottery=has_lottery_runs(native, study),
        curves=bool(_histories(at_budget(runs, budget=False), study, read)),
        budgets=not at_budget(rows, budget=True).empty,
        benchmark=not (_pareto_rows(native, study, "macs_dense_mean").empty
                       or _pareto_rows(timed, study, latency).empty))


def draw_figure(name: str, runs: pd.DataFrame, summary: pd.DataFrame, study: str,
                styles: dict[str, dict] | None = None) -> Figure:
    """Figure `name` (of PLOTS or BUDGET_PLOTS) of `study`: the runs asked for a budget in
    the equal-cost figure only. `styles` default to the study's series in `summary`."""
    styles = _study_styles(summary[summary["study"] == study], styles)
    if name in BUDGET_PLOTS:
        return equal_cost_figure(summary, study, styles)
    return FIGURES[name](at_budget(runs, budget=False), at_budget(summary, budget=False),
                         study, styles)


def save_figure(fig: Figure, path: Path) -> Path:
    """Render to a temp file next to `path`, then rename it into place."""
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI), mode="wb")


def write_plots(runs: pd.DataFrame, summary: pd.DataFrame, out_dir: Path,
                figures: Sequence[str] | None = None) -> list[Path]:
    """The figures of every study as `<study>_<name>.png` in `out_dir`, in output order:
    those named in `figures` (the workflow's plot rules name those the study declares; one
    whose data the tables lack is refused, naming what is missing), else every figure the
    tables can fill (`drawable_figures`). Every figure of a study draws its series alike
    (`series_styles` of all its rows); returns the paths."""
    out_dir = Path(out_dir)
    written = []
    for study in studies(summary):
        names = (drawable_figures(runs, summary, study) if figures is None
                 else [n for n in PLOTS + BUDGET_PLOTS if n in figures])
        styles = series_styles(summary.loc[summary["study"] == study, "series"])
        for name in names:
            fig = draw_figure(name, runs, summary, study, styles)
            written.append(save_figure(fig, out_dir / plot_filename(study, name)))
    return written


def plot_filename(study: str, name: str) -> str:
    return f"{study}_{name}.png"
