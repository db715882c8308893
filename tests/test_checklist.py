"""Blalock et al.'s reporting checklist (`prunebench.analysis.checklist`), on runs tables
written by hand: one study that meets every request, and one per request that misses it,
each checked on the data (met or not, the numbers the reason names)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from prunebench.analysis.aggregate import (
    LEADING_COLUMNS,
    TRAILING_COLUMNS,
    add_ratios,
    read_tables,
    summarise,
    write_tables,
)
from prunebench.analysis.checklist import (
    MIN_POINTS,
    MIN_SEEDS,
    REQUESTS,
    SHARED_FIGURES,
    checklist_data,
    study_checklist,
)
from prunebench.analysis.names import PLOTS
from prunebench.analysis.plots import plot_filename
from prunebench.analysis.report import CHECKLIST_HEADING, write_report
from prunebench.cli import main

STUDY = "toy"
PARAMS = 10_000
MACS = 1_000_000
WEIGHTS = (0.5, 0.75, 0.875, 0.9375, 0.96875)  # compression 2, 4, 8, 16, 32
CHANNELS = (0.1, 0.2, 0.3, 0.4, 0.5)
SEEDS = (0, 1, 2)
# series -> (method, label, recovery, structured, targets): dense, two magnitude baselines
# (weights and channels), another method, its distilled variant, and N:M at its one point.
GOOD = {
    "dense": ("dense", "dense", None, False, (0.0,)),
    "global_magnitude": ("global_magnitude", "global_magnitude", "finetune", False, WEIGHTS),
    "l1_filter": ("l1_filter", "l1_filter", "finetune", True, CHANNELS),
    "snip": ("snip", "snip", "finetune", False, WEIGHTS),
    "snip+distill": ("snip", "snip", "distill", False, WEIGHTS),
    "nm_2_4": ("nm", "nm_2_4", "finetune", False, (0.5,)),
}
ALL_FIGURES = list(PLOTS)


def _row(series: str, spec: tuple, target: float, seed: int) -> dict:
    method, label, recovery, structured, _ = spec
    # masked: the architecture and its MACs stay, zeros skip their MACs; channels removed:
    # (1 - c)^2 of the weights and MACs are left, with no zeros among them
    left = (1 - target) ** 2 if structured else 1 - target
    top1 = 0.95 - 0.1 * target + 0.001 * seed
    return {
        "study": STUDY, "dataset": "digits", "model": "mlp", "method": method, "label": label,
        "target_sparsity": None if structured else target,
        "channel_sparsity": target if structured else None,
        "recovery": recovery, "control": None, "series": series, "seed": seed,
        "weight_sparsity": 0.0 if structured else target, "top1": top1, "top5": 0.99,
        "params_total": round(PARAMS * left) if structured else PARAMS,
        "params_nonzero": round(PARAMS * left),
        "params_remaining_frac": left,
        "param_reduction": 1 - left,
        "macs": round(MACS * left) if structured else MACS,
        "macs_reduction": 1 - left if structured else 0.0,
        "macs_dense": round(MACS * left) if structured else MACS,
        "macs_effective": round(MACS * left),
        "run_dir": f"runs/{series}-{target}-{seed}", "hash": f"{series}{target}{seed}",
    }


def _runs(specs: dict = GOOD, seeds=SEEDS) -> pd.DataFrame:
    rows = [_row(series, spec, target, seed)
            for series, spec in specs.items() for target in spec[4] for seed in seeds]
    frame = pd.DataFrame(rows)
    for column in LEADING_COLUMNS + TRAILING_COLUMNS:
        if column not in frame:
            frame[column] = math.nan
    extra = sorted(c for c in frame if c not in LEADING_COLUMNS + TRAILING_COLUMNS)
    return add_ratios(frame[LEADING_COLUMNS + extra + TRAILING_COLUMNS])


def _items(runs: pd.DataFrame, figures=ALL_FIGURES) -> dict:
    return {i.key: i for i in study_checklist(runs, STUDY, figures=figures)}


# ---------------------------------------------------------------- the ratios


def test_ratios_are_computed_from_the_reductions_and_the_benchmark():
    runs = _runs()
    assert {"compression_ratio", "theoretical_speedup"} <= set(LEADING_COLUMNS)
    mag = runs[runs["series"] == "global_magnitude"].drop_duplicates("target_sparsity")
    assert mag["compression_ratio"].tolist() == pytest.approx([2, 4, 8, 16, 32])
    assert mag["theoretical_speedup"].tolist() == pytest.approx([2, 4, 8, 16, 32])
    l1f = runs[(runs["series"] == "l1_filter") & (runs["channel_sparsity"] == 0.5)]
    assert l1f["compression_ratio"].tolist() == pytest.approx([4, 4, 4])
    assert l1f["theoretical_speedup"].tolist() == pytest.approx([4, 4, 4])  # MACs / 4
    dense = runs[runs["series"] == "dense"]
    assert dense[["compression_ratio", "theoretical_speedup"]].eq(1.0).all().all()
    # a run no benchmark measured has no effective MACs, so no theoretical speed-up
    unmeasured = add_ratios(runs.drop(columns=["macs_effective", "macs_dense"]))
    assert unmeasured["theoretical_speedup"].isna().all()
    assert unmeasured["compression_ratio"].tolist() == runs["compression_ratio"].tolist()
    summary = summarise(runs)
    assert {"compression_ratio_mean", "theoretical_speedup_std"} <= set(summary.columns)


# ---------------------------------------------------------------- all met


def test_a_study_that_meets_every_request():
    items = _items(_runs())
    assert list(items) == list(REQUESTS)
    assert all(item.met for item in items.values()), {k: i.detail for k, i in items.items()}
    points = items["operating_points"].data["series"]
    assert points["global_magnitude"]["count"] == MIN_POINTS
    assert points["l1_filter"]["points"] == ["c0.10", "c0.20", "c0.30", "c0.40", "c0.50"]
    # N:M fixes its sparsity (1 - N/M): its one point is exempt, and said so
    assert points["nm_2_4"] == {"methods": ["nm"], "points": ["s0.50"], "count": 1,
                                "fixed_sparsity": True}
    assert "exempt: nm_2_4, 1 point (0.5): method nm fixes its sparsity" in \
        items["operating_points"].detail
    assert items["compression_and_speedup"].data["compression_ratio"] == pytest.approx(
        [1 / 0.81, 32])  # 10 % of the channels removed: 81 % of the weights left
    assert "at all 21 pruned grid points" in items["compression_and_speedup"].detail
    assert items["dense_control"].data == {"runs": 3, "seeds": [0, 1, 2],
                                           "top1_mean": pytest.approx(0.951)}
    assert items["seeds"].detail == "3 seeds at all 22 grid points"
    assert items["shared_baselines"].data["magnitude_baselines"] == ["global_magnitude",
                                                                     "l1_filter"]


# ---------------------------------------------------------------- one request missed each


def test_too_few_operating_points_name_the_series_and_their_points():
    specs = {**GOOD, "snip": ("snip", "snip", "finetune", False, (0.5, 0.8, 0.95))}
    item = _items(_runs(specs))["operating_points"]
    assert not item.met
    assert item.data["series"]["snip"]["count"] == 3
    assert item.detail.startswith("3 operating points (0.5, 0.8, 0.95): snip;")
    assert item.detail.endswith(f"; {MIN_POINTS} asked")
    assert "snip+distill" not in item.detail.split(";")[0]  # it has its five


def test_a_single_point_counts_only_for_a_method_that_fixes_its_sparsity():
    one_point = {**GOOD, "snip": ("snip", "snip", "finetune", False, (0.5,))}
    item = _items(_runs(one_point))["operating_points"]
    assert not item.met and not item.data["series"]["snip"]["fixed_sparsity"]
    assert "1 operating point (0.5): snip" in item.detail
    # nor does N:M make a study's curves alone
    only_nm = {k: GOOD[k] for k in ("dense", "nm_2_4")}
    item = _items(_runs(only_nm))["operating_points"]
    assert not item.met and item.data["series"]["nm_2_4"]["fixed_sparsity"]
    assert "no pruned series other than ones whose method fixes its sparsity" in item.detail
    # the caller may say otherwise than the registry
    item = study_checklist(_runs(), STUDY, fixed_sparsity=lambda m: False)[0]
    assert not item.met and "1 operating point (0.5): nm_2_4" in item.detail


def test_a_missing_theoretical_speedup_names_the_grid_points():
    runs = _runs()
    unmeasured = runs["series"].eq("snip") & runs["target_sparsity"].isin([0.5, 0.75])
    runs.loc[unmeasured, ["macs_dense", "macs_effective"]] = math.nan
    item = _items(add_ratios(runs))["compression_and_speedup"]
    assert not item.met
    assert item.data["missing"] == {"compression_ratio": [],
                                    "theoretical_speedup": ["snip @ s0.50", "snip @ s0.75"]}
    assert item.detail == ("theoretical speed-up missing at 2 of 21 pruned grid points (no "
                           "benchmark: macs_effective missing: snip @ s0.50, snip @ s0.75)")


def test_tables_without_the_ratio_columns_get_them_computed():
    runs = _runs().drop(columns=["compression_ratio", "theoretical_speedup"])
    item = _items(runs)["compression_and_speedup"]
    assert item.met and "these tables predate the columns" in item.detail


def test_no_top5_column_or_values():
    item = _items(_runs().drop(columns=["top5"]))["top1_and_top5"]
    assert not item.met and item.detail == "no top-5 column"
    runs = _runs()
    runs.loc[runs["series"] == "dense", "top5"] = math.nan
    item = _items(runs)["top1_and_top5"]
    assert not item.met
    assert item.detail == "top-5 missing at 1 of 22 grid points (dense @ s0.00)"


def test_no_dense_control():
    items = _items(_runs({k: v for k, v in GOOD.items() if k != "dense"}))
    assert not items["dense_control"].met
    assert items["dense_control"].detail == "no dense (unpruned) runs in the study"
    assert not items["shared_baselines"].met  # nothing to draw the curves against
    assert "no dense control" in items["shared_baselines"].detail


def test_too_few_seeds_say_how_many():
    item = _items(_runs(seeds=(0, 1)))["seeds"]
    assert not item.met
    assert item.detail == f"2 seeds at all 22 grid points; {MIN_SEEDS} asked"
    runs = _runs()
    runs = runs[~(runs["series"].eq("snip") & runs["target_sparsity"].eq(0.5)
                  & runs["seed"].eq(2))]
    item = _items(runs)["seeds"]
    assert not item.met and item.data["short"] == ["snip @ s0.50"]
    assert item.data["seeds"]["snip @ s0.50"] == 2 and item.data["seeds"]["snip @ s0.75"] == 3
    assert item.detail == (f"fewer than {MIN_SEEDS} seeds at 1 of 22 grid points, fewest 2 "
                           f"(snip @ s0.50); {MIN_SEEDS} asked")


def test_no_magnitude_baseline():
    specs = {k: v for k, v in GOOD.items() if k not in ("global_magnitude", "l1_filter")}
    item = _items(_runs(specs))["shared_baselines"]
    assert not item.met and item.data["magnitude_baselines"] == []
    assert item.detail.startswith("no magnitude-pruning baseline (global_magnitude")


def test_shared_figures_must_exist_and_place_every_series():
    figures = [f for f in PLOTS if f != "accuracy_vs_macs"]
    item = _items(_runs(), figures=figures)["shared_baselines"]
    assert not item.met and item.detail == "figure accuracy_vs_macs not drawn"
    runs = _runs()
    runs.loc[runs["series"] == "snip", "param_reduction"] = math.nan
    item = _items(runs)["shared_baselines"]
    assert not item.met and item.data["unplaced"]["accuracy_vs_params"] == ["snip"]
    assert item.detail == "snip not in accuracy_vs_params (no param_reduction)"


def test_budget_runs_are_grid_points_by_budget():
    """A run asked for a cost budget (budget_kind, budget_value) is one grid point per
    budget, whatever sparsity its search found for each seed."""
    runs = _runs()
    budget = runs[runs["series"] == "global_magnitude"].copy()
    budget["budget_kind"] = "params"
    budget["budget_value"] = [v for v in (0.5, 0.25, 0.125, 0.0625, 0.03125) for _ in SEEDS]
    budget["target_sparsity"] += 0.001 * budget["seed"]  # found per seed
    budget["series"] = budget["label"] = "global_magnitude_budget"
    items = _items(pd.concat([runs, budget], ignore_index=True))
    assert items["operating_points"].met and items["seeds"].met
    assert items["operating_points"].data["series"]["global_magnitude_budget"]["points"] == [
        "params=0.03125", "params=0.0625", "params=0.125", "params=0.25", "params=0.5"]


def test_a_budget_run_of_a_method_that_fixes_its_sparsity_keeps_it_exempt():
    """N:M can meet a compression or params budget only at its own sparsity: that run is
    another point by name, not another sparsity."""
    runs = _runs()
    nm = runs[runs["series"] == "nm_2_4"].copy()
    nm["budget_kind"], nm["budget_value"] = "compression", 2.0
    items = _items(pd.concat([runs, nm], ignore_index=True))
    entry = items["operating_points"].data["series"]["nm_2_4"]
    assert entry["points"] == ["s0.50", "compression=2"] and entry["fixed_sparsity"]
    assert items["operating_points"].met and items["seeds"].met
    # a method that does not fix its sparsity, at a few budgets only, is short of points
    snip = runs[runs["series"] == "snip"].copy()
    snip["series"] = snip["label"] = "snip_budget"
    snip["budget_kind"] = "compression"
    snip["budget_value"] = snip["target_sparsity"].map({0.5: 2.0, 0.75: 4.0, 0.875: 8.0})
    snip = snip.dropna(subset=["budget_value"])
    item = _items(pd.concat([runs, snip], ignore_index=True))["operating_points"]
    assert not item.met
    assert item.detail.startswith("3 operating points (compression=2, compression=4, "
                                  "compression=8): snip_budget;")


# ---------------------------------------------------------------- report and checklist.json


def _write(tmp_path: Path, runs: pd.DataFrame) -> Path:
    tables = tmp_path / "tables"
    write_tables(runs, summarise(runs), tables)
    plots = tmp_path / "plots"
    plots.mkdir()
    for name in PLOTS:  # the checklist only asks which exist
        (plots / plot_filename(STUDY, name)).write_bytes(b"")
    return tables


def test_report_shows_the_checklist_and_writes_it_as_data(tmp_path, capsys):
    tables = _write(tmp_path, _runs(seeds=(0, 1)))
    report = tmp_path / "out" / "report.md"
    argv = ["report", "--tables", str(tables), "--plots", str(tmp_path / "plots"),
            "--out", str(report)]
    assert main(argv) == 0
    assert capsys.readouterr().out.split() == [str(report), str(report.parent / "checklist.json")]
    text, first = report.read_text(), (report.parent / "checklist.json").read_bytes()
    assert main(argv) == 0  # byte-stable
    assert report.read_text() == text and (report.parent / "checklist.json").read_bytes() == first

    data = json.loads(first)
    runs, _ = read_tables(tables)
    assert data == json.loads(json.dumps(checklist_data(
        runs, figures=lambda study: list(PLOTS))))
    entry = data["studies"][STUDY]
    assert entry["met"] is False and entry["unmet"] == ["seeds"]
    assert [i["number"] for i in entry["items"]] == [1, 2, 3, 4, 5, 6]
    assert entry["items"][4]["detail"] == f"2 seeds at all 22 grid points; {MIN_SEEDS} asked"

    section = text.split(f"### {CHECKLIST_HEADING}\n", 1)[1].split("\n### ", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == ["#", "Request", "Met", "What the data show"]
    assert [r[2] for r in rows[1:]] == ["yes", "yes", "yes", "yes", "**no**", "yes"]
    assert "misses 1 of the six requests" in section
    assert "[checklist.json](checklist.json)" in section

    # --checklist puts it elsewhere, and the report links it there
    elsewhere = tmp_path / "data" / "c.json"
    assert main([*argv, "--checklist", str(elsewhere)]) == 0
    assert json.loads(elsewhere.read_bytes()) == data
    assert "[c.json](../data/c.json)" in report.read_text()
    capsys.readouterr()


def test_missing_shared_figure_files_fail_request_six_in_the_report(tmp_path):
    tables = _write(tmp_path, _runs())
    (tmp_path / "plots" / plot_filename(STUDY, "accuracy_vs_params")).unlink()
    write_report(tables, tmp_path / "plots", tmp_path / "report.md")
    entry = json.loads((tmp_path / "checklist.json").read_text())["studies"][STUDY]
    assert entry["unmet"] == ["shared_baselines"]
    assert entry["items"][5]["detail"] == "figure accuracy_vs_params not drawn"
    assert list(SHARED_FIGURES) == ["accuracy_vs_params", "accuracy_vs_macs"]


# ---------------------------------------------------------------- the committed studies


@pytest.mark.parametrize("study", ["digits_cnn", "mnist_lenet300"])
def test_committed_studies(study):
    """The committed tables (written before the ratio columns) give a checklist; what it says
    matches their data: the fewest seeds and operating points, N:M exempt."""
    tables = Path(__file__).resolve().parents[1] / "results" / "studies" / study
    runs, _ = read_tables(tables)
    items = {i.key: i for i in study_checklist(runs, study, figures=list(PLOTS))}
    pruned = runs[runs["series"] != "dense"]
    fewest_seeds = int(runs.groupby(["series", "target_sparsity", "channel_sparsity"],
                                    dropna=False)["seed"].nunique().min())
    assert items["seeds"].met == (fewest_seeds >= MIN_SEEDS)
    points = items["operating_points"].data["series"]
    assert set(points) == set(pruned["series"])
    for series, entry in points.items():
        assert entry["fixed_sparsity"] == (entry["methods"] == ["nm"])
    for key in ("compression_and_speedup", "top1_and_top5", "dense_control",
                "shared_baselines"):
        assert items[key].met, items[key].detail
