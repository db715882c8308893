"""Aggregation, plots and report, on run directories written by hand with known numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prunebench.analysis.aggregate import (
    LEADING_COLUMNS,
    collect_runs,
    headline_metrics,
    read_tables,
    summarise,
    write_tables,
)
from prunebench.analysis.plots import (
    PLOT_NAMES,
    accuracy_figure,
    curves_figure,
    params_figure,
    write_plots,
)
from prunebench.analysis.report import write_report
from prunebench.cli import main
from prunebench.errors import ConfigError

STUDY = "toy"
SEEDS = (0, 1)
SPARSITIES = (0.5, 0.9)
PARAMS_TOTAL = 1000
# top-1 per (label, target sparsity) and seed
TOP1 = {
    ("dense", 0.0): (0.90, 0.92),
    ("mag", 0.5): (0.89, 0.91),
    ("mag", 0.9): (0.80, 0.86),
    ("rnd", 0.5): (0.70, 0.74),
    ("rnd", 0.9): (0.30, 0.20),
}
KIND = {"dense": "train", "mag": "finetune", "rnd": "finetune"}
HISTORY_EPOCHS = 3


def _write_run(root: Path, label: str, sparsity: float, seed: int, **extra_metrics) -> dict:
    kind = KIND[label]
    run_hash = f"{label}{int(sparsity * 100):03d}s{seed}"
    path = root / kind / run_hash
    path.mkdir(parents=True)
    top1 = TOP1[(label, sparsity)][seed]
    config = {"kind": kind, "hash": run_hash, "study": STUDY, "dataset": "digits",
              "model": "mlp", "method": {"dense": "dense", "mag": "global_magnitude",
                                         "rnd": "random"}[label],
              "label": label, "target_sparsity": sparsity, "seed": seed, "data": {}, "config": {}}
    nonzero = round(PARAMS_TOTAL * (1 - sparsity))
    metrics = {"top1": top1, "top5": min(1.0, top1 + 0.05), "loss": 1 - top1,
               "val_top1": top1 - 0.01, "val_top5": 1.0, "val_loss": 1.01 - top1,
               "weight_sparsity": sparsity + 0.001 * seed, "params_total": PARAMS_TOTAL,
               "params_nonzero": nonzero, "train_time_s": 1.0 + seed, **extra_metrics}
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.json").write_text(json.dumps(metrics))
    epochs = np.arange(1, HISTORY_EPOCHS + 1)
    pd.DataFrame({"epoch": epochs, "iteration": 10 * epochs, "lr": 0.1, "train_loss": 1.0,
                  "train_top1": 0.5, "val_loss": 1.0, "val_top1": top1 * epochs / HISTORY_EPOCHS,
                  "val_top5": 1.0, "epoch_time_s": 0.1}).to_csv(path / "history.csv", index=False)
    return {"kind": kind, "path": str(path), "study": STUDY, "label": label, "seed": seed,
            "target_sparsity": sparsity, "top1": top1}


@pytest.fixture
def manifests(tmp_path: Path) -> list[Path]:
    """train + one finetune manifest per method (+ a prune manifest that must be ignored)."""
    root, jobs = tmp_path / "runs", tmp_path / "jobs"
    jobs.mkdir()
    dense = [_write_run(root, "dense", 0.0, s) for s in SEEDS]
    files = [jobs / "train.json"]
    files[0].write_text(json.dumps({"command": "train", "study": STUDY, "runs": dense}))
    for label in ("mag", "rnd"):
        runs = []
        for seed in SEEDS:
            for sparsity in SPARSITIES:
                bench = {"latency_ms": 2.0 + seed, "macs_effective": 100 * (1 - sparsity)} \
                    if label == "mag" else {}
                run = _write_run(root, label, sparsity, seed)
                if bench:
                    (Path(run["path"]) / "benchmark.json").write_text(json.dumps(bench))
                runs.append(run)
        runs.append({"kind": "prune", "path": str(root / "prune" / "x")})  # intermediate
        files.append(jobs / f"{label}.json")
        files[-1].write_text(json.dumps({"command": "finetune", "study": STUDY, "runs": runs}))
    prune = jobs / "prune.json"
    prune.write_text(json.dumps({"command": "prune", "runs": [{"kind": "prune",
                                                               "path": "nowhere"}]}))
    return [*files, prune, files[0]]  # train listed twice: runs are de-duplicated


@pytest.fixture
def runs(manifests) -> pd.DataFrame:
    return collect_runs(manifests)


def _expected(label: str, sparsity: float) -> tuple[float, float]:
    values = TOP1[(label, sparsity)]
    return float(np.mean(values)), float(np.std(values, ddof=1))


# ---------------------------------------------------------------- aggregation


def test_collect_runs_rows_and_columns(runs):
    assert len(runs) == 2 + 2 * 2 * 2
    assert list(runs.columns[: len(LEADING_COLUMNS)]) == LEADING_COLUMNS
    assert list(runs.columns[-2:]) == ["run_dir", "hash"]
    assert runs["run_dir"].is_unique
    sort_keys = ["study", "label", "target_sparsity", "seed"]
    assert runs[sort_keys].equals(runs.sort_values(sort_keys)[sort_keys].reset_index(drop=True))
    row = runs[(runs["label"] == "mag") & (runs["target_sparsity"] == 0.9) & (runs["seed"] == 1)]
    assert row["top1"].item() == 0.86
    assert row["params_remaining_frac"].item() == pytest.approx(0.1)
    assert row["hash"].item() == "mag090s1"


def test_extra_metrics_and_benchmark_keys_become_columns(runs):
    extra = runs.columns[len(LEADING_COLUMNS):-2].tolist()
    assert extra == sorted(extra) and {"latency_ms", "macs_effective", "train_time_s"} <= set(extra)
    mag = runs[runs["label"] == "mag"]
    assert mag["latency_ms"].tolist() == [2.0, 3.0, 2.0, 3.0]
    assert runs.loc[runs["label"] != "mag", "latency_ms"].isna().all()


def test_summary_mean_std_n_and_delta(runs):
    summary = summarise(runs).set_index(["label", "target_sparsity"])
    dense_mean, _ = _expected("dense", 0.0)
    for key in TOP1:
        mean, std = _expected(*key)
        row = summary.loc[key]
        assert row["n"] == 2
        assert row["top1_mean"] == pytest.approx(mean)
        assert row["top1_std"] == pytest.approx(std)
        assert row["delta_top1_vs_dense"] == pytest.approx(mean - dense_mean)
    assert summary.loc[("mag", 0.9), "latency_ms_mean"] == pytest.approx(2.5)
    assert summary.loc[("mag", 0.9), "weight_sparsity_mean"] == pytest.approx(0.9005)
    assert "seed_mean" not in summary.columns


def test_single_seed_std_is_nan_and_printed_as_dash(runs, tmp_path):
    summary = summarise(runs[runs["seed"] == 0])
    assert summary["n"].eq(1).all() and summary["top1_std"].isna().all()
    write_tables(runs, summary, tmp_path / "t")
    assert "89.00 ± –" in (tmp_path / "t" / "summary.md").read_text()
    assert headline_metrics(summary)[STUDY]["mag"]["s0.50"]["top1_std"] is None


def test_write_tables_and_markdown(runs, tmp_path):
    summary = summarise(runs)
    write_tables(runs, summary, tmp_path)
    back, back_summary = read_tables(tmp_path)
    assert back.columns.tolist() == runs.columns.tolist() and len(back) == len(runs)
    assert back_summary["top1_mean"].tolist() == pytest.approx(summary["top1_mean"].tolist())
    md = (tmp_path / "summary.md").read_text()
    assert f"## {STUDY}" in md
    mean, std = _expected("mag", 0.9)
    assert f"{mean * 100:.2f} ± {std * 100:.2f}" == "83.00 ± 4.24"
    assert "83.00 ± 4.24" in md
    assert "72.00 ± 2.83" in md and "25.00 ± 7.07" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "Method" not in line]
    assert rows[0].startswith("| dense") and len(rows) == len(TOP1)
    assert "-66.00" in md  # rnd at 0.9: 25 - 91 pp


def test_headline_metrics_keys(runs):
    headline = headline_metrics(summarise(runs))
    assert set(headline[STUDY]) == {"dense", "mag", "rnd"}
    assert set(headline[STUDY]["mag"]) == {"s0.50", "s0.90"}
    assert headline[STUDY]["dense"]["s0.00"]["top1_mean"] == pytest.approx(0.91)
    json.dumps(headline, allow_nan=False)


def test_bad_manifests_raise_config_error(tmp_path, manifests):
    with pytest.raises(ConfigError, match="missing.json"):
        collect_runs([tmp_path / "missing.json"])
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"command": "finetune", "runs": []}))
    with pytest.raises(ConfigError, match="empty.json"):
        collect_runs([empty])
    with pytest.raises(ConfigError, match="prune.json"):
        collect_runs([manifests[-2]])  # only prune runs: empty table
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"runs": [{"kind": "train", "path": str(tmp_path / "nope")}]}))
    with pytest.raises(ConfigError, match="broken.json"):
        collect_runs([broken])


def test_relative_run_paths_resolve_from_the_manifest(tmp_path, manifests, monkeypatch):
    train = json.loads(manifests[0].read_text())
    for run in train["runs"]:
        run["path"] = str(Path("..") / Path(run["path"]).relative_to(tmp_path))
    manifests[0].write_text(json.dumps(train))
    monkeypatch.chdir(tmp_path / "runs")
    assert len(collect_runs([manifests[0]])) == 2


# ---------------------------------------------------------------- plots


def test_accuracy_figure_has_one_line_per_method_and_dense(runs):
    fig = accuracy_figure(summarise(runs), STUDY)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 3  # mag, rnd and the dense reference
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dense (n=2)", "mag", "rnd"]
    mag = next(line for line in ax.get_lines() if line.get_label() == "mag")
    assert mag.get_ydata().tolist() == pytest.approx([90.0, 83.0])
    assert mag.get_xdata().tolist() == pytest.approx([0.5005, 0.9005])


def test_params_and_curves_figures(runs):
    summary = summarise(runs)
    labels = [line.get_label() for line in params_figure(summary, STUDY).axes[0].get_lines()]
    assert {"mag", "rnd", "dense"} <= set(labels)
    ax = curves_figure(runs, STUDY).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"dense", "mag @ 0.9", "rnd @ 0.9"}
    assert lines["mag @ 0.9"].get_ydata()[-1] == pytest.approx(83.0)  # seed mean, last epoch


def test_write_plots_gives_nonblank_pngs(runs, tmp_path):
    import matplotlib.image

    paths = write_plots(runs, summarise(runs), tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{STUDY}_{n}.png" for n in PLOT_NAMES)
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
        assert image[..., :3].std() > 0.01
    assert not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------- report and CLI


def _links(report: str) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", report)


def test_cli_end_to_end_and_report(manifests, tmp_path, capsys):
    results = tmp_path / "results"
    listing = tmp_path / "manifests.txt"
    listing.write_text("\n".join(str(m) for m in manifests[1:]) + "\n# comment\n\n")
    assert main(["aggregate", str(manifests[0]), "--manifest-list", str(listing),
                 "--out", str(results / "tables"), "--metrics", str(results / "metrics.json")]) == 0
    assert len(pd.read_csv(results / "tables" / "runs.csv")) == 10
    assert json.loads((results / "metrics.json").read_text())[STUDY]["rnd"]["s0.90"]["top1_mean"] \
        == pytest.approx(0.25)
    assert main(["plot", "--tables", str(results / "tables"), "--out", str(results / "plots")]) == 0
    report = results / "report.md"
    argv = ["report", "--tables", str(results / "tables"), "--plots", str(results / "plots"),
            "--out", str(report)]
    assert main(argv) == 0
    text = report.read_text()
    first = report.read_bytes()
    assert main(argv) == 0
    assert report.read_bytes() == first
    links = _links(text)
    images = [x for x in links if x.endswith(".png")]
    assert len(images) == len(PLOT_NAMES)
    assert all(not Path(x).is_absolute() and (results / x).is_file() for x in links)
    assert "tables/runs.csv" in links and "10 runs" in text and "83.00 ± 4.24" in text
    assert not re.search(r"20\d\d-\d\d-\d\d", text)

    (results / "plots" / f"{STUDY}_training_curves.png").unlink()
    assert main(argv) == 0
    assert "training_curves" not in report.read_text()
    capsys.readouterr()


def test_report_links_are_relative_to_the_report(runs, tmp_path):
    summary = summarise(runs)
    write_tables(runs, summary, tmp_path / "tables")
    write_plots(runs, summary, tmp_path / "plots")
    report = write_report(tmp_path / "tables", tmp_path / "plots", tmp_path / "docs" / "report.md")
    links = _links(report.read_text())
    assert f"../plots/{STUDY}_accuracy_vs_sparsity.png" in links
    assert all((report.parent / x).is_file() for x in links)


@pytest.mark.parametrize("argv, name", [
    (["aggregate", "{tmp}/missing.json", "--out", "{tmp}/t"], "missing.json"),
    (["aggregate", "--manifest-list", "{tmp}/list.txt", "--out", "{tmp}/t"], "list.txt"),
    (["plot", "--tables", "{tmp}/none", "--out", "{tmp}/p"], "runs.csv"),
    (["report", "--tables", "{tmp}/none", "--plots", "{tmp}/p", "--out", "{tmp}/r.md"],
     "runs.csv"),
])
def test_cli_bad_input_exits_2_naming_the_file(tmp_path, capsys, argv, name):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("prunebench: error:") and name in err[-1]
    assert not (tmp_path / "t").exists()


def test_cli_module_does_not_import_pandas_or_matplotlib():
    import subprocess
    import sys

    code = ("import sys, prunebench.analysis.cli; "
            "print(any(m.split('.')[0] in ('pandas', 'matplotlib') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sparsity_keys():
    from prunebench.analysis.aggregate import sparsity_key

    assert [sparsity_key(s) for s in (0.0, 0.8, 0.95, 0.995)] == \
        ["s0.00", "s0.80", "s0.95", "s0.995"]
