"""Figures per study: accuracy and its loss against sparsity, accuracy against the parameters
and MACs left, parameters left, accuracy against measured MACs and latency (Pareto fronts),
training curves, and lottery tickets (Frankle & Carbin's two curves: test accuracy and the
early-stopping iteration against the weights remaining, tickets beside their reinitialised
controls).

The sparsity-axis figures show the dense model and the unstructured methods only: a
structured method's target is a fraction of channels, not a weight sparsity. The
parameter, MAC and Pareto figures put every method, structured or not, on one measured axis;
the Pareto figures need the benchmark's columns and say so in the figure when it has none.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot), so nothing depends on
a global backend or figure registry; PNGs are rendered by Agg. Each `*_figure` function
returns its Figure, so tests can inspect the lines it drew.

Lines, bars and markers are one per series (the `series` column: "mag", "mag+distill"); the
lottery figure pairs tickets and controls by `label`, `recovery` and `control`. The figure names, in
output order, are `PLOTS` (defined in `names`, which the workflow imports without pandas or
matplotlib; re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from prunebench.analysis.aggregate import (
    MACS_PER_M,
    at_budget,
    latency_batches,
    ordered_series,
    studies,
    ticket_controls,
)
from prunebench.analysis.names import DENSE_LABEL, REINIT, TICKET, plot_names
from prunebench.budgets import KINDS as BUDGET_KINDS
from prunebench.io import atomic_write

DPI = 120
FIGSIZE = (6.4, 4.2)
LEGEND_ONE_COLUMN = 12  # more legend entries than this: a wider figure, two columns
COLLAPSE_PP = 25.0  # a model this far below the best one has collapsed (chance accuracy)
DENSE_COLOR = "black"
MARKERS = "osD^vPX*"  # distinct markers keep overlapping lines apart
NO_UNSTRUCTURED = "no unstructured methods in this study"  # why a sparsity axis is empty
NO_BENCHMARK = "no benchmark results in this study"  # why a Pareto figure is empty
DENSE_MARKER = "*"
EFFECTIVE_LEGEND = "hollow: effective MACs (zeros skipped)"
FRONT_COLOR = "grey"
STRUCTURED_LINESTYLE = "-."  # tells channel-pruned methods apart where all methods meet
NO_LOTTERY = "no lottery-ticket runs in this study"


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


def _styles(names: Sequence[str]) -> dict[str, dict]:
    """One stable colour and marker per series (dense is always black)."""
    methods = [x for x in ordered_series(names) if x != DENSE_LABEL]
    # tab20 holds 10 dark/light pairs: the 10 dark ones first, then the light ones.
    palette = matplotlib.colormaps["tab20"].colors
    return {DENSE_LABEL: {"color": DENSE_COLOR},
            **{name: {"color": palette[(2 * i) % 20 + (2 * i) // 20 % 2],
                      "marker": MARKERS[i % len(MARKERS)]}
               for i, name in enumerate(methods)}}


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


def _note(ax: Axes, text: str) -> None:
    """Say in the figure why it is (partly) empty, rather than leave a blank frame."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def _dense_reference(ax: Axes, rows: pd.DataFrame) -> None:
    """The dense model's top-1 as a dashed horizontal line with its ±std band."""
    dense = _dense(rows)
    if dense is None:
        return
    mean, std = 100 * dense["top1_mean"], 100 * _std(pd.Series([dense["top1_std"]]))[0]
    ax.axhline(mean, color=DENSE_COLOR, linestyle="--", linewidth=1.2,
               label=f"{DENSE_LABEL} (n={int(dense['n'])})")
    if std > 0:
        ax.axhspan(mean - std, mean + std, color=DENSE_COLOR, alpha=0.08, linewidth=0)


def _accuracy_line(ax: Axes, x: np.ndarray, m: pd.DataFrame, label: str, style: dict) -> None:
    """Mean top-1 (%) of one method against `x`, with a ±std band."""
    y, err = 100 * m["top1_mean"].to_numpy(dtype=float), 100 * _std(m["top1_std"])
    ax.plot(x, y, label=label, **style)
    ax.fill_between(x, np.clip(y - err, 0, 100), np.clip(y + err, 0, 100),
                    color=style["color"], alpha=0.15, linewidth=0)


# ---------------------------------------------------------------- figures


def accuracy_figure(summary: pd.DataFrame, study: str) -> Figure:
    """Top-1 (%) against achieved weight sparsity: one line per unstructured method with a
    ±std band, and the dense model as a dashed horizontal line with its band."""
    rows = summary[summary["study"] == study]
    styles = _styles(rows["series"])
    rows = _unstructured(rows)
    fig, ax = _new_figure(f"{study}: test top-1 accuracy vs. sparsity")
    _dense_reference(ax, rows)
    methods = _methods(rows)
    for name in methods:
        m = rows[rows["series"] == name].sort_values("target_sparsity")
        _accuracy_line(ax, m["weight_sparsity_mean"].to_numpy(dtype=float), m, name,
                       styles[name])
    if not methods:
        _note(ax, NO_UNSTRUCTURED)
    _sparsity_axis(ax, _grid_sparsities(rows), "achieved weight sparsity (log-density scale)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_ylim(top=100.5)
    _method_legend(fig, ax)
    return fig


def delta_figure(summary: pd.DataFrame, study: str) -> Figure:
    """Top-1 difference to dense (percentage points) per method, grouped by target sparsity;
    error bars are the method's std over seeds."""
    rows = summary[summary["study"] == study]
    styles = _styles(rows["series"])
    rows = _unstructured(rows)
    methods = _methods(rows)
    grid = _grid_sparsities(rows)
    fig, ax = _new_figure(f"{study}: top-1 change vs. dense")
    width = 0.8 / max(len(methods), 1)
    for i, name in enumerate(methods):
        m = rows[rows["series"] == name].set_index("target_sparsity").reindex(grid)
        pos = np.arange(len(grid)) - 0.4 + width * (i + 0.5)
        ax.bar(pos, 100 * m["delta_top1_vs_dense"].to_numpy(dtype=float), width,
               yerr=100 * _std(m["top1_std"]), capsize=3, color=styles[name]["color"],
               label=name)
    ax.axhline(0.0, color=DENSE_COLOR, linewidth=1.0)
    ax.set_xticks(np.arange(len(grid)), [_fmt_sparsity(s) for s in grid])
    ax.set_xlabel("target weight sparsity")
    ax.set_ylabel("Δ top-1 vs. dense (percentage points)")
    if methods:
        _method_legend(fig, ax)
    else:
        _note(ax, NO_UNSTRUCTURED)
    return fig


def params_figure(summary: pd.DataFrame, study: str) -> Figure:
    """Fraction of all parameters that are nonzero (biases included) per method, against the
    target sparsity, with 1 − sparsity (prunable weights only) as reference."""
    rows = summary[summary["study"] == study]
    styles = _styles(rows["series"])
    rows = _unstructured(rows)
    grid = _grid_sparsities(rows)
    fig, ax = _new_figure(f"{study}: parameters remaining")
    ax.axhline(100.0, color=DENSE_COLOR, linestyle="--", linewidth=1.2, label=DENSE_LABEL)
    if grid:
        ax.plot(grid, [100 * (1 - s) for s in grid], color="grey", linestyle=":",
                label="1 − target sparsity")
    else:
        _note(ax, NO_UNSTRUCTURED)
    for name in _methods(rows):
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
                           xlabel: str) -> Figure:
    """Top-1 (%) of every method against `1 − <reduction>_mean` (what is left of the unpruned
    model), so structured, unstructured and distilled methods meet on one measured axis;
    structured methods are dash-dotted."""
    rows = summary[summary["study"] == study]
    styles = _styles(rows["series"])
    fig, ax = _new_figure(title)
    _dense_reference(ax, rows)
    column = f"{reduction}_mean"
    fractions = []
    for name in _methods(rows):
        m = rows[rows["series"] == name].dropna(subset=[column])
        m = m.assign(_left=1.0 - m[column]).sort_values("_left", ascending=False)
        style = dict(styles[name])
        if m["channel_sparsity"].notna().any():
            style["linestyle"] = STRUCTURED_LINESTYLE
        _accuracy_line(ax, m["_left"].to_numpy(dtype=float), m, name, style)
        fractions += m["_left"].tolist()
    _fraction_axis(ax, fractions, xlabel)
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_ylim(top=100.5)
    _method_legend(fig, ax)
    return fig


def accuracy_vs_params_figure(summary: pd.DataFrame, study: str) -> Figure:
    """Top-1 against the fraction of the unpruned model's parameters that are left (nonzero
    and not removed): methods compared at equal size, whatever they prune."""
    return _accuracy_vs_remaining(
        summary, study, "param_reduction", f"{study}: test top-1 vs. parameters remaining",
        "parameters remaining (fraction of unpruned, log scale)")


def accuracy_vs_macs_figure(summary: pd.DataFrame, study: str) -> Figure:
    """Top-1 against the fraction of the dense MACs left on dense kernels: masked methods
    stay at 100 %, only removed channels save compute."""
    return _accuracy_vs_remaining(
        summary, study, "macs_reduction", f"{study}: test top-1 vs. MACs remaining",
        "MACs remaining on dense kernels (fraction of unpruned, log scale)")


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


def _pareto_figure(summary: pd.DataFrame, study: str, column: str | None, factor: float,
                   title: str, xlabel: str,
                   extra: Callable[[Axes, pd.DataFrame, dict], None] | None = None) -> Figure:
    """Mean top-1 (%) of every benchmarked model against `factor` × `column` on a log axis,
    one marker per method, the Pareto front as a thin grey step line, and what `extra` draws
    on the same rows before the legend is made. Without benchmark results (no `column`, or
    no values in it) the figure says so."""
    rows = summary[summary["study"] == study]
    styles = _styles(rows["series"])
    fig, ax = _new_figure(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test top-1 accuracy (%)")
    drawn = rows.dropna(subset=[column, "top1_mean"]) if column in rows else rows.iloc[:0]
    if drawn.empty:
        _note(ax, NO_BENCHMARK)
        return fig
    front_x, front_y = pareto_front(factor * drawn[column], 100 * drawn["top1_mean"])
    ax.step(front_x, front_y, where="post", color=FRONT_COLOR, linewidth=0.8,
            label="Pareto front")
    for name in ordered_series(drawn["series"]):
        m = drawn[drawn["series"] == name]
        ax.plot(factor * m[column], 100 * m["top1_mean"], label=name,
                **_point_style(styles, name))
    if extra is not None:
        extra(ax, drawn, styles)
    _cost_axis(ax)
    _clip_collapsed(ax, 100 * drawn["top1_mean"])
    _method_legend(fig, ax)
    return fig


def _clip_collapsed(ax: Axes, top1: pd.Series) -> None:
    """Keep the accuracy axis on the models that work: one collapsed model (chance accuracy)
    would squash every other point into a line. Models more than COLLAPSE_PP below the best
    fall off the axis, and a note says how many."""
    floor = top1.max() - COLLAPSE_PP
    below = int((top1 < floor).sum())
    if below:
        ax.set_ylim(bottom=floor, top=min(top1.max() + 1.0, 100.5))
        ax.text(0.01, 0.01, f"{below} model(s) below {floor:.0f} % not shown", fontsize="small",
                transform=ax.transAxes, color=FRONT_COLOR)


def _effective_macs(ax: Axes, rows: pd.DataFrame, styles: dict[str, dict]) -> None:
    """Hollow markers at the effective MACs (zero weights skipped) of the masked methods: what
    sparse kernels could at best save, next to what dense kernels cost. Labels starting with
    "_" keep them out of the legend, which gets one grey entry for all of them."""
    masked = rows[(rows["series"] != DENSE_LABEL) & rows["target_sparsity"].notna()]
    if "macs_effective_mean" not in masked or masked["macs_effective_mean"].isna().all():
        return
    masked = masked.dropna(subset=["macs_effective_mean"])
    for name in ordered_series(masked["series"]):
        m = masked[masked["series"] == name]
        ax.plot(m["macs_effective_mean"] / MACS_PER_M, 100 * m["top1_mean"],
                label=f"_{name} effective", markerfacecolor="none",
                **_point_style(styles, name))
    ax.plot([], [], color=FRONT_COLOR, marker="o", markerfacecolor="none", linestyle="none",
            label=EFFECTIVE_LEGEND)


def pareto_macs_figure(summary: pd.DataFrame, study: str) -> Figure:
    """Top-1 against the MACs per sample on dense kernels (the Pareto front is over these):
    masked models stack at the dense model's cost; hollow markers show their effective MACs."""
    return _pareto_figure(summary, study, "macs_dense_mean", 1 / MACS_PER_M,
                          f"{study}: test top-1 vs. MACs (benchmark)",
                          "MACs per sample on dense kernels (M, log scale)", _effective_macs)


def pareto_latency_figure(summary: pd.DataFrame, study: str) -> Figure:
    """Top-1 against what each model costs on the hardware as it runs today, at the study's
    largest batch size on dense kernels: its latency relative to the dense model's, timed
    alternately in one process (1 / the paired speed-up), where the benchmark recorded it;
    otherwise the measured median latency."""
    rows = summary[summary["study"] == study]
    batches = latency_batches(rows)
    batch = f"{batches[-1]}" if batches else "the largest size"
    paired = f"speedup_vs_dense_b{batch}_mean"
    title = f"{study}: test top-1 vs. latency (benchmark)"
    if paired in rows and rows[paired].notna().any():
        relative = summary.assign(_relative_latency=1.0 / summary[paired])
        return _pareto_figure(relative, study, "_relative_latency", 1.0, title,
                              f"latency at batch {batch} / dense model's (paired, log scale)")
    column = f"latency_dense_b{batches[-1]}_ms_mean" if batches else None
    return _pareto_figure(summary, study, column, 1.0, title,
                          f"median latency per batch of {batch}, dense kernels (ms, log scale)")


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


def curves_figure(runs: pd.DataFrame, study: str,
                  read: Callable[[str], pd.DataFrame | None] = read_history) -> Figure:
    """Validation top-1 per epoch, averaged over seeds (band: ±std), for dense and for each
    unstructured method at its highest target sparsity."""
    styles = _styles(runs.loc[runs["study"] == study, "series"])
    fig, ax = _new_figure(f"{study}: validation accuracy during training")
    drawn = 0
    for series, picked in curve_runs(runs, study).items():
        histories = [h for h in map(read, picked["run_dir"]) if h is not None]
        if not histories:
            continue
        per_epoch = pd.concat(histories).groupby("epoch")["val_top1"].agg(["mean", "std"])
        x = per_epoch.index.to_numpy(dtype=float)
        y, err = 100 * per_epoch["mean"].to_numpy(), 100 * _std(per_epoch["std"])
        sparsity = picked["target_sparsity"].iloc[0]
        name = series if series == DENSE_LABEL else f"{series} @ {_fmt_sparsity(sparsity)}"
        ax.plot(x, y, color=styles[series]["color"], label=name,
                linestyle="--" if series == DENSE_LABEL else "-")
        ax.fill_between(x, y - err, y + err, color=styles[series]["color"], alpha=0.12,
                        linewidth=0)
        drawn += 1
    if drawn:
        _method_legend(fig, ax)
    else:
        _note(ax, "no history.csv found in the run directories")
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


def lottery_figure(summary: pd.DataFrame, study: str) -> Figure:
    """Test top-1 (left) and the early-stopping iteration, the iteration of minimum
    validation loss (right), against the percentage of weights remaining (log scale, falling
    to the right), mean ±std over seeds, for each ticket series (lottery labels, `+rewind`
    recoveries) and its random reinitialisation control; both lines start at the dense
    model (100 %)."""
    rows = summary[summary["study"] == study]
    styles = _styles(rows["series"])
    fig = Figure(figsize=(FIGSIZE[0] * 1.8, FIGSIZE[1]), dpi=DPI, layout="tight")
    axes = fig.subplots(1, 2)
    lines = _lottery_lines(rows)
    panels = (("top1", 100.0, "test top-1 accuracy (%)"),
              ("early_stop_iteration", 1.0, "early-stopping iteration (min. validation loss)"))
    for ax, (metric, scale, ylabel) in zip(axes, panels):
        ax.grid(True, alpha=0.3)
        drawn = 0
        for (series, control), line in lines.items():
            if f"{metric}_mean" not in line or line[f"{metric}_mean"].isna().all():
                continue
            style = styles[series]  # a control takes its ticket's
            x = 100 * (1.0 - line["weight_sparsity_mean"].to_numpy(dtype=float))
            y = scale * line[f"{metric}_mean"].to_numpy(dtype=float)
            err = scale * _std(line[f"{metric}_std"])
            reinit = control == REINIT
            ax.plot(x, y, color=style["color"], marker=style["marker"],
                    linestyle="--" if reinit else "-", markersize=4,
                    label=f"{series} (random reinit)" if reinit else f"{series} (ticket)")
            ax.fill_between(x, y - err, y + err, color=style["color"],
                            alpha=0.08 if reinit else 0.18, linewidth=0)
            drawn += 1
        if drawn:
            ax.set_xscale("log")
            ax.invert_xaxis()
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.legend(fontsize="small")
        else:
            _note(ax, NO_LOTTERY)
        ax.set_xlabel("weights remaining (%, log scale)")
        ax.set_ylabel(ylabel)
    fig.suptitle(f"{study}: lottery tickets against random reinitialisation")
    return fig


# ---------------------------------------------------------------- writing


def save_figure(fig: Figure, path: Path) -> Path:
    """Render to a temp file next to `path`, then rename it into place."""
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI), mode="wb")


# What draws each of PLOTS: (runs, summary, study) -> Figure.
FIGURES: dict[str, Callable[[pd.DataFrame, pd.DataFrame, str], Figure]] = {
    "accuracy_vs_sparsity": lambda runs, summary, study: accuracy_figure(summary, study),
    "delta_vs_dense": lambda runs, summary, study: delta_figure(summary, study),
    "params_remaining": lambda runs, summary, study: params_figure(summary, study),
    "accuracy_vs_params": lambda runs, summary, study: accuracy_vs_params_figure(summary, study),
    "accuracy_vs_macs": lambda runs, summary, study: accuracy_vs_macs_figure(summary, study),
    "pareto_macs": lambda runs, summary, study: pareto_macs_figure(summary, study),
    "pareto_latency": lambda runs, summary, study: pareto_latency_figure(summary, study),
    "training_curves": lambda runs, summary, study: curves_figure(runs, study),
    "lottery_tickets": lambda runs, summary, study: lottery_figure(summary, study),
}


def equal_cost_figure(summary: pd.DataFrame, study: str) -> Figure:
    """Top-1 (%) of every method at each budget point, one panel per budget kind (x: the
    budget's value), mean over seeds with ±std error bars, the dense model as the dashed
    line: methods side by side at equal cost. Methods at one budget value are spread a
    little along x (dodged) so that equal accuracies stay visible; the legend has its own
    panel on the right."""
    rows = at_budget(summary[summary["study"] == study], budget=True)
    everything = summary[summary["study"] == study]
    styles = _styles(everything["series"])
    kinds = [k for k in BUDGET_KINDS if (rows["budget_kind"] == k).any()] or ["params"]
    fig = Figure(figsize=(4.2 * len(kinds) + 2.6, FIGSIZE[1]), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(kinds) + 1, width_ratios=[4.2] * len(kinds) + [2.6])
    fig.suptitle(f"{study}: test top-1 at equal cost")
    names = _methods(rows)
    for ax, kind in zip(axes, kinds):
        _dense_reference(ax, everything)
        of_kind = rows[rows["budget_kind"] == kind]
        values = sorted(of_kind["budget_value"].unique())
        log_x = kind in ("compression", "latency")
        gaps = np.diff(np.log(values) if log_x else values) if len(values) > 1 else [0.0]
        width = 0.3 * (min(gaps) if len(values) > 1 else (0.2 if log_x else 0.05))
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
        batches = sorted(of_kind["budget_batch_size"].dropna().unique())
        ax.set_xlabel(BUDGET_AXES[kind] + (f" (batch {', '.join(f'{b:g}' for b in batches)})"
                                           if batches else ""))
        if log_x:
            _cost_axis(ax)
        ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.set_ylabel("test top-1 (%)")
        ax.grid(True, alpha=0.3)
    legend = axes[-1]
    legend.axis("off")
    entries: dict[str, Any] = {}
    for ax in axes[:-1]:
        entries.update(zip(*reversed(ax.get_legend_handles_labels())))
    if entries:
        legend.legend(list(entries.values()), list(entries.keys()), loc="center left",
                      fontsize="small", frameon=False)
    else:
        _note(axes[0], "no budget runs in this study")
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


def write_plots(runs: pd.DataFrame, summary: pd.DataFrame, out_dir: Path,
                figures: Sequence[str] | None = None) -> list[Path]:
    """The figures of every study as `<study>_<name>.png` in `out_dir`, in the order of
    `plot_names` (the equal-cost figure only for a study with budget runs), or only those
    named in `figures` (the workflow draws the equal-cost figure in a rule of its own);
    returns their paths. Runs asked for a budget are drawn in that figure only."""
    out_dir = Path(out_dir)
    written = []
    for study in studies(summary):
        has_budgets = not at_budget(summary[summary["study"] == study], budget=True).empty
        native = at_budget(summary, budget=False)
        for name in plot_names(has_budgets):
            if figures is not None and name not in figures:
                continue
            fig = (equal_cost_figure(summary, study) if name == "equal_cost"
                   else FIGURES[name](at_budget(runs, budget=False), native, study))
            written.append(save_figure(fig, out_dir / plot_filename(study, name)))
    return written


def plot_filename(study: str, name: str) -> str:
    return f"{study}_{name}.png"
