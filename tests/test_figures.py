"""Figures that say something (issue #25): checked on the figures' data, not by eye.

- A study has only the figures its runs fill: which ones is decided from its declaration
  (`plan.study_figures`, what the workflow's plot rules list) and from the tables
  (`plots.drawable_figures`); a figure asked for without its data is refused, not drawn
  empty.
- Accuracy axes zoom to where the methods differ; a collapsed point is a marker on the
  lower edge with its value written, not a stretched axis.
- Every series has its own colour and marker, the same in every figure of a study.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb

from prunebench.analysis.names import PLOT_GROUPS, PLOTS, figure_names
from prunebench.analysis.plots import (
    CLIPPED_LEGEND,
    CLIPPED_MARKER,
    DENSE_COLOR,
    EFFECTIVE_LEGEND,
    FRONT_COLOR,
    accuracy_figure,
    accuracy_vs_macs_figure,
    accuracy_vs_params_figure,
    delta_figure,
    draw_figure,
    drawable_figures,
    equal_cost_figure,
    lottery_figure,
    pareto_latency_figure,
    pareto_macs_figure,
    series_styles,
    write_plots,
)
from prunebench.errors import ConfigError
from prunebench.plan import study_figures
from prunebench.study import parse_study

STUDY = "s"
SPARSITY_FIGURES = PLOT_GROUPS["plot_sparsity"]


def _row(series: str, target: float | None, top1: float, *, channel: float | None = None,
         control: str | None = None, label: str | None = None, **extra) -> dict:
    """One summary row (a series at one grid point) with the columns the figures read: a
    masked model keeps its MACs and latency, a channel-pruned one (`channel`) sheds both."""
    removed = channel if channel is not None else (target or 0.0)
    masked = channel is None
    recovery = "distill" if series.endswith("+distill") else None
    return {"study": STUDY, "series": series, "label": label or series.split("+")[0],
            "method": "dense" if series == "dense" else "m", "recovery": recovery,
            "control": control, "target_sparsity": target, "channel_sparsity": channel,
            "weight_sparsity_mean": target if masked else 0.0, "top1_mean": top1,
            "top1_std": 0.002, "n": 3, "delta_top1_vs_dense": top1 - DENSE_TOP1,
            "params_remaining_frac_mean": 1.0 - removed, "param_reduction_mean": removed,
            "macs_reduction_mean": 0.0 if masked else removed,
            "macs_dense_mean": 1e6 * (1.0 if masked else 1.0 - removed),
            "macs_effective_mean": 1e6 * (1.0 - removed),
            "latency_dense_b1_ms_mean": 1.0 if masked else 1.0 - removed,
            "budget_kind": None, "budget_value": math.nan, "budget_batch_size": math.nan,
            **extra}


DENSE_TOP1 = 0.98
TARGETS = (0.5, 0.8, 0.9)


def _summary(tops: dict[str, tuple[float, ...]], structured: tuple[str, ...] = ()) -> pd.DataFrame:
    """Dense at DENSE_TOP1, and each series at TARGETS with the given top-1s (a fraction of
    channels for the `structured` ones)."""
    rows = [_row("dense", 0.0, DENSE_TOP1)]
    for series, values in tops.items():
        for target, top1 in zip(TARGETS, values):
            if series in structured:
                rows.append(_row(series, None, top1, channel=target / 2))
            else:
                rows.append(_row(series, target, top1))
    return pd.DataFrame(rows)


def _many_series() -> dict[str, tuple[float, ...]]:
    """27 series, as a study of 13 methods, their distilled variants and a lottery control
    has: each at 95-99 %."""
    rng = np.random.default_rng(0)
    names = [f"method_{i:02d}" for i in range(13)]
    names += [f"{n}+distill" for n in names] + ["lottery_reinit"]
    return {n: tuple(rng.uniform(0.95, 0.99, size=len(TARGETS))) for n in names}


def _series_lines(ax) -> dict:
    """The lines of the legend's series (not the dense reference or edge markers)."""
    return {line.get_label(): line for line in ax.get_lines()
            if not line.get_label().startswith(("_", "dense"))
            and line.get_label() not in (CLIPPED_LEGEND, EFFECTIVE_LEGEND, "Pareto front")}


# ---------------------------------------------------------------- styles


def test_27_series_have_distinct_colours_and_markers_and_none_is_the_dense_colour():
    summary = _summary(_many_series(), structured=("method_12", "method_12+distill"))
    styles = series_styles(summary["series"])
    pairs = [(to_rgb(s["color"]), s["marker"]) for name, s in styles.items() if name != "dense"]
    assert len(pairs) == 27 and len(set(pairs)) == 27
    assert to_rgb(styles["dense"]["color"]) == to_rgb(DENSE_COLOR)
    greys = {to_rgb(DENSE_COLOR), to_rgb(FRONT_COLOR)}
    assert not greys & {colour for colour, _ in pairs}
    assert all(len({round(c, 3) for c in colour}) > 1 for colour, _ in pairs)  # no grey at all
    assert len({colour for colour, _ in pairs[:20]}) == 20  # 20 series: 20 colours
    assert CLIPPED_MARKER not in {marker for _, marker in pairs}
    # what the figures draw is those styles, alike in every figure of the study
    for figure in (accuracy_figure, accuracy_vs_params_figure, accuracy_vs_macs_figure):
        lines = _series_lines(figure(summary, STUDY, styles).axes[0])
        expected = set(styles) - {"dense"}
        if figure is accuracy_figure:  # the sparsity axis: unstructured series only
            expected -= {"method_12", "method_12+distill"}
        assert set(lines) == expected
        for name, line in lines.items():
            assert to_rgb(line.get_color()) == to_rgb(styles[name]["color"])
            assert line.get_marker() == styles[name]["marker"]
    pareto = _series_lines(pareto_macs_figure(summary, STUDY).axes[0])  # styles of its own
    assert {n: (to_rgb(line.get_color()), line.get_marker()) for n, line in pareto.items()
            if n in styles} == {n: (to_rgb(s["color"]), s["marker"])
                                        for n, s in styles.items() if n != "dense"}


@pytest.mark.parametrize("count", [1, 20, 21, 220, 300])
def test_every_series_keeps_its_own_colour_and_marker_however_many(count):
    names = [f"m{i:03d}" for i in range(count)]
    styles = series_styles(["dense", *names])
    pairs = [(tuple(styles[n]["color"]), styles[n]["marker"]) for n in names]
    assert len(set(pairs)) == count
    if count <= 220:  # the palette's 20 colours, each with up to 11 markers
        assert len({colour for colour, _ in pairs}) == min(count, 20)
    # the order the rows come in does not matter: styles follow the study's series
    assert series_styles(reversed(["dense", *names])) == styles


# ---------------------------------------------------------------- zoom


def _collapsed_summary() -> pd.DataFrame:
    """Three methods at 95-99 %, one of them ("wanda") collapsed to 10 % at its highest
    target."""
    return _summary({"mag": (0.985, 0.975, 0.96), "snip": (0.98, 0.97, 0.95),
                     "wanda": (0.98, 0.965, 0.10), "l1": (0.975, 0.97, 0.955)},
                    structured=("l1",))


def _edge_markers(ax) -> list:
    return [line for line in ax.get_lines() if line.get_label().endswith(" below the axis")]


@pytest.mark.parametrize("figure, x", [
    (accuracy_figure, 0.9),              # achieved sparsity
    (accuracy_vs_params_figure, 0.1),    # parameters left
    (accuracy_vs_macs_figure, 1.0),      # a mask keeps its MACs
    (pareto_macs_figure, 1.0),           # MACs (M)
    (pareto_latency_figure, 1.0),        # latency (ms)
])
def test_a_collapsed_point_is_a_marker_on_the_lower_edge_not_a_stretched_axis(figure, x):
    summary = _collapsed_summary()
    styles = series_styles(summary["series"])
    ax = figure(summary, STUDY, styles).axes[0]
    bottom, top = ax.get_ylim()
    assert 90.0 < bottom < 95.0 and 98.5 <= top <= 100.5  # the working methods fill the axis
    edges = _edge_markers(ax)  # the Pareto figure's hollow effective-MACs point: a second
    assert len(edges) == (2 if figure is pareto_macs_figure else 1)
    for edge in edges:
        assert edge.get_marker() == CLIPPED_MARKER
        assert to_rgb(edge.get_color()) == to_rgb(styles["wanda"]["color"])
        assert edge.get_ydata()[0] == bottom
        assert not edge.get_clip_on()  # drawn whole on the edge
    assert edges[-1].get_xdata()[0] == pytest.approx(x)
    assert [t.get_text() for t in ax.texts] == ["10.0"] * len(edges)  # its true top-1
    assert CLIPPED_LEGEND in [t.get_text() for t in ax.get_legend().get_texts()]
    # the line itself keeps its true values (leaving the axes through the bottom)
    if figure in (accuracy_figure, accuracy_vs_params_figure):
        assert _series_lines(ax)["wanda"].get_ydata()[-1] == pytest.approx(10.0)


def test_without_collapse_the_axis_zooms_on_all_points_and_marks_nothing():
    summary = _summary({"mag": (0.985, 0.975, 0.96), "snip": (0.98, 0.97, 0.95)})
    ax = accuracy_figure(summary, STUDY).axes[0]
    bottom, top = ax.get_ylim()
    assert 93.0 < bottom < 95.0 and 98.5 < top <= 100.5
    assert not _edge_markers(ax) and not ax.texts
    assert CLIPPED_LEGEND not in [t.get_text() for t in ax.get_legend().get_texts()]


def test_delta_lottery_and_equal_cost_axes_clip_a_collapse_too():
    summary = _collapsed_summary()
    ax = delta_figure(summary, STUDY).axes[0]
    bottom, top = ax.get_ylim()
    assert -10.0 < bottom < -3.0 and top > 0.0  # zero (dense) in view, -88 pp off it
    [edge] = _edge_markers(ax)
    assert edge.get_ydata()[0] == bottom and [t.get_text() for t in ax.texts] == ["-88.0"]

    tickets = summary[summary["series"].isin(["dense", "wanda"])].copy()
    tickets.loc[tickets["series"] == "wanda", "control"] = "ticket"
    ax = lottery_figure(tickets, STUDY).axes[0]
    assert ax.get_ylim()[0] > 90.0 and len(_edge_markers(ax)) == 1

    budget = pd.DataFrame([_row("dense", 0.0, DENSE_TOP1)] + [
        _row(name, None, top1, budget_kind="params", budget_value=value)
        for name, tops in (("mag", (0.97, 0.96)), ("wanda", (0.96, 0.10)))
        for value, top1 in zip((0.5, 0.75), tops)])
    ax = equal_cost_figure(budget, STUDY).axes[0]
    assert ax.get_ylim()[0] > 90.0 and len(_edge_markers(ax)) == 1


# ---------------------------------------------------------------- which figures


BASE = {
    "data": {"name": "digits", "val_size": 0.1},
    "model": {"name": "mlp_digits"},
    "train": {"epochs": 1, "lr": 0.05, "batch_size": 64},
    "finetune": {"epochs": 1},
    "sparsities": [0.5],
    "channel_sparsities": [0.5],
    "seeds": [0],
}


def _declared(methods: dict, **extra) -> tuple[str, ...]:
    return study_figures(parse_study("tiny", {**copy.deepcopy(BASE), "methods": methods,
                                              **extra}))


def test_the_declaration_says_which_figures_a_study_has():
    everything = PLOTS  # no budgets
    assert _declared({"global_magnitude": {}, "lottery": {"prune_fraction": 0.5}}) == everything
    no_lottery = _declared({"global_magnitude": {}, "neuron_magnitude": {}})
    assert "lottery_tickets" not in no_lottery and set(SPARSITY_FIGURES) <= set(no_lottery)
    # a rewind recovery makes tickets of the methods it rewinds, not of SNIP's
    assert "lottery_tickets" in _declared({"global_magnitude": {}}, recover=["rewind"])
    assert "lottery_tickets" not in _declared({"snip": {}}, recover=["finetune", "rewind"])
    structured = _declared({"neuron_magnitude": {}})
    assert not set(SPARSITY_FIGURES) & set(structured)
    assert {"accuracy_vs_params", "accuracy_vs_macs", "pareto_macs", "pareto_latency",
            "training_curves"} == set(structured)
    budgets = _declared({"global_magnitude": {}}, budgets=[{"kind": "params", "values": [0.5]}])
    assert budgets[-1] == "equal_cost"


def test_figure_names_keep_the_output_order_and_leave_out_what_is_missing():
    for flags in itertools.product((False, True), repeat=5):
        unstructured, lottery, curves, budgets, benchmark = flags
        names = figure_names(unstructured=unstructured, lottery=lottery, curves=curves,
                             budgets=budgets, benchmark=benchmark)
        assert list(names) == sorted(names, key=(PLOTS + ("equal_cost",)).index)
        assert ("lottery_tickets" in names) is lottery
        assert ("equal_cost" in names) is budgets
        assert ("training_curves" in names) is curves
        assert all((n in names) is unstructured for n in SPARSITY_FIGURES)
        assert "accuracy_vs_params" in names and "accuracy_vs_macs" in names


def _runs(summary: pd.DataFrame) -> pd.DataFrame:
    """Runs for the tables (no history.csv: no training curves)."""
    return summary.assign(run_dir="/nonexistent")


def test_a_study_without_lottery_runs_gets_no_lottery_figure_and_a_structured_one_no_sparsity_axis(
        tmp_path):
    summary = _collapsed_summary()
    written = write_plots(_runs(summary), summary, tmp_path)
    assert "lottery_tickets" not in drawable_figures(_runs(summary), summary, STUDY)
    assert [p.name for p in written] == [f"{STUDY}_{n}.png" for n in PLOTS
                                         if n not in ("training_curves", "lottery_tickets")]
    assert sorted(tmp_path.glob("*.png")) == sorted(written)

    structured = _summary({"l1": (0.975, 0.97, 0.955)}, structured=("l1",))
    names = drawable_figures(_runs(structured), structured, STUDY)
    assert not set(SPARSITY_FIGURES) & set(names)
    for name in (*SPARSITY_FIGURES, "lottery_tickets", "training_curves", "equal_cost"):
        with pytest.raises(ConfigError, match=f"figure {name} needs"):
            draw_figure(name, _runs(structured), structured, STUDY)
    out = tmp_path / "asked"
    with pytest.raises(ConfigError, match="lottery_tickets needs lottery-ticket runs"):
        write_plots(_runs(summary), summary, out, figures=["lottery_tickets"])
    assert not out.exists()  # refused, not drawn empty
