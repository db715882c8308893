"""Aggregation, plots and report, on run directories written by hand with known numbers.

The fixtures write run configs in the current shape (the plain method label, `recovery` and
`control`); `legacy=True` writes them as prunebench did before `control` existed (the
recovery and the lottery control in the label and method), to check both give one result."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest

from prunebench.analysis.aggregate import (
    ID_COLUMNS,
    LEADING_COLUMNS,
    SORT_KEYS,
    TRAILING_COLUMNS,
    collect_runs,
    hardware_table,
    headline_metrics,
    lottery_table,
    modes_table,
    read_tables,
    recovery_pairs,
    summarise,
    summary_markdown,
    write_tables,
)
from prunebench.analysis.names import PLOTS, check_kind, normalise_legacy_record, series_name
from prunebench.analysis.plots import (
    CLIPPED_LEGEND,
    EFFECTIVE_LEGEND,
    FIGURES,
    accuracy_figure,
    accuracy_vs_macs_figure,
    accuracy_vs_params_figure,
    curves_figure,
    delta_figure,
    params_figure,
    pareto_front,
    pareto_latency_figure,
    pareto_macs_figure,
    write_plots,
)
from prunebench.analysis.plots import lottery_figure
from prunebench.analysis.report import CAPTIONS, TITLES, write_report
from prunebench.cli import main
from prunebench.errors import ConfigError

STUDY = "toy"
DENSE = "dense"
SEEDS = (0, 1)
PARAMS_TOTAL = 1600
MACS_TOTAL = 5000


class Method(NamedTuple):
    kind: str
    method: str
    label: str  # the study's method label, as the run's config has it
    recovery: str | None
    control: str | None
    structured: bool  # its targets are channel sparsities

    @property
    def command(self) -> str:
        """The command whose job manifest lists the run."""
        return {"train": "train", "recover": self.recovery}.get(self.kind, "lottery")


# By series name (what tables and legends show).
METHODS = {
    DENSE: Method("train", "dense", DENSE, None, None, False),
    "mag": Method("recover", "global_magnitude", "mag", "finetune", None, False),
    "mag+distill": Method("recover", "global_magnitude", "mag", "distill", None, False),
    "rnd": Method("recover", "random", "rnd", "finetune", None, False),
    "l1f": Method("recover", "l1_filter", "l1f", "finetune", None, True),
    "l1f+distill": Method("recover", "l1_filter", "l1f", "distill", None, True),
}
# Lottery tickets and their controls, written only where a test asks for them.
LOTTERY = {
    "lt": Method("lottery", "lottery", "lt", None, "ticket", False),
    "lt_reinit": Method("lottery_reinit", "lottery", "lt", None, "reinit", False),
}
ALL = {**METHODS, **LOTTERY}
# top-1 per (series, target) and seed; the target is a channel sparsity for structured ones
TOP1 = {
    ("dense", 0.0): (0.90, 0.92),
    ("mag", 0.5): (0.89, 0.91),
    ("mag", 0.9): (0.80, 0.86),
    ("mag+distill", 0.9): (0.84, 0.88),  # distilled at 0.9 only: pairs with mag @ 0.9 alone
    ("rnd", 0.5): (0.70, 0.74),
    ("rnd", 0.9): (0.30, 0.20),
    ("l1f", 0.25): (0.88, 0.90),
    ("l1f", 0.5): (0.85, 0.87),
    ("l1f+distill", 0.5): (0.86, 0.90),
}
LOTTERY_TOP1 = {
    ("lt", 0.5): (0.91, 0.93),
    ("lt", 0.8): (0.90, 0.90),
    ("lt_reinit", 0.5): (0.88, 0.90),
    ("lt_reinit", 0.8): (0.80, 0.84),
}
STRUCTURED = ("dense", "l1f", "l1f+distill")
HISTORY_EPOCHS = 3

# Benchmark headlines of the dense model, a masked one and a channel-pruned one (the other
# runs have none): the masked model keeps the dense size, MACs and latency, and only its
# sparse encoding and effective MACs shrink; the channel-pruned one shrinks everywhere.
# Latencies are (batch 1, batch 128) in ms, scaled per seed by LATENCY_JITTER (mean 1).
BENCHMARKED = {
    ("dense", 0.0): {"size_dense_bytes": 1_000_000, "size_sparse_bytes": 900_000,
                     "macs_dense": 2_000_000, "macs_effective": 2_000_000,
                     "memory_peak_bytes": 4_000_000, "memory_avg_bytes": 3_000_000,
                     "latency": {"dense": (1.0, 10.0), "sparse_csr": (3.0, 40.0)}},
    ("mag", 0.9): {"size_dense_bytes": 1_000_000, "size_sparse_bytes": 250_000,
                   "macs_dense": 2_000_000, "macs_effective": 200_000,
                   "memory_peak_bytes": 4_000_000, "memory_avg_bytes": 3_000_000,
                   "latency": {"dense": (1.0, 10.0), "sparse_csr": (2.0, 5.0)}},
    ("l1f", 0.5): {"size_dense_bytes": 250_000, "size_sparse_bytes": 240_000,
                   "macs_dense": 600_000, "macs_effective": 600_000,
                   "memory_peak_bytes": 1_000_000, "memory_avg_bytes": 800_000,
                   "latency": {"dense": (0.5, 4.0)}},  # sparse_csr skipped: no zeros
}
BATCHES = (1, 128)
LATENCY_JITTER = (0.75, 1.25)
ENERGY_REASON = "no energy counter is readable on this CPU"
BENCHMARK_THREADS = 1  # the training runs report 2: the benchmark's gets the prefix


def _reductions(name: str, target: float) -> tuple[int, int, float]:
    """(params_total, params_nonzero, macs_reduction) of a run: masks zero weights but keep
    the architecture and its MACs; removing a fraction c of the channels leaves (1 - c)^2 of
    the weights and a little more of the MACs."""
    if not ALL[name].structured:
        return PARAMS_TOTAL, round(PARAMS_TOTAL * (1 - target)), 0.0
    left = round(PARAMS_TOTAL * (1 - target) ** 2)
    return left, left, 1 - (1 - target) ** 2 - 0.05


def _meta(spec: Method, name: str, legacy: bool) -> dict:
    """A run's identifying config keys: the label, method, recovery and control as they are
    written now, or (`legacy`) as before `control`: the series name as label, and the
    control's method "lottery_reinit"."""
    if legacy:
        return {"method": "lottery_reinit" if spec.control == "reinit" else spec.method,
                "label": name, "recovery": spec.recovery}
    return {"method": spec.method, "label": spec.label, "recovery": spec.recovery,
            "control": spec.control}


def _write_run(root: Path, name: str, target: float, seed: int, study: str = STUDY,
               legacy: bool = False, top1s: dict | None = None, **extra_metrics) -> dict:
    spec = ALL[name]
    run_hash = f"{name.replace('+', '_')}{int(target * 100):03d}s{seed}"
    path = root / spec.kind / run_hash
    path.mkdir(parents=True)
    top1 = (top1s or TOP1)[(name, target)][seed]
    meta = {"study": study, "dataset": "digits", "model": "mlp", **_meta(spec, name, legacy),
            "target_sparsity": None if spec.structured else target,
            "channel_sparsity": target if spec.structured else None,
            "seed": seed, "result": True}
    total, nonzero, macs_reduction = _reductions(name, target)
    metrics = {"top1": top1, "top5": min(1.0, top1 + 0.05), "loss": 1 - top1,
               "val_top1": top1 - 0.01, "val_top5": 1.0, "val_loss": 1.01 - top1,
               "weight_sparsity": 0.0 if spec.structured else target + 0.001 * seed,
               "params_total": total, "params_nonzero": nonzero,
               "param_reduction": 1 - nonzero / PARAMS_TOTAL,
               "macs": round(MACS_TOTAL * (1 - macs_reduction)), "macs_reduction": macs_reduction,
               "threads": 2, "train_time_s": 1.0 + seed, **extra_metrics}
    if spec.structured:
        metrics["channels"] = {"fc1": {"kept": 8, "total": 16}}  # nested: not a column
    if spec.control:
        metrics["early_stop_iteration"] = 100 * (seed + 1) * (2 if spec.control == "reinit" else 1)
    (path / "config.json").write_text(json.dumps(
        {"kind": spec.kind, "hash": run_hash, **meta, "data": {}, "config": {}}))
    (path / "metrics.json").write_text(json.dumps(metrics))
    epochs = np.arange(1, HISTORY_EPOCHS + 1)
    pd.DataFrame({"epoch": epochs, "iteration": 10 * epochs, "lr": 0.1, "train_loss": 1.0,
                  "train_top1": 0.5, "val_loss": 1.0, "val_top1": top1 * epochs / HISTORY_EPOCHS,
                  "val_top5": 1.0, "epoch_time_s": 0.1}).to_csv(path / "history.csv", index=False)
    return {"kind": spec.kind, "path": str(path), **meta, "top1": top1, "series": name}


def _write_intermediate(root: Path, kind: str, label: str, seed: int,
                        legacy: bool = False) -> dict:
    """A finished run that only feeds others (slimming's pretraining, a one-shot prune)."""
    path = root / kind / f"{label}s{seed}"
    path.mkdir(parents=True)
    meta = {"study": STUDY, "dataset": "digits", "model": "mlp", "method": "slimming",
            "label": label, "target_sparsity": 0.0 if kind == "train" else None,
            "channel_sparsity": None if kind == "train" else 0.5, "recovery": None,
            **({} if legacy else {"control": None}), "seed": seed, "result": False}
    (path / "config.json").write_text(json.dumps({"kind": kind, "hash": path.name, **meta}))
    (path / "metrics.json").write_text(json.dumps({"top1": 0.5, "params_total": PARAMS_TOTAL,
                                                   "params_nonzero": PARAMS_TOTAL}))
    return {"kind": kind, "path": str(path), **meta}


def _write_benchmark(root: Path, run: dict, target: float, seed: int) -> dict:
    """The benchmark run of a result run, as the benchmark stage writes it, and its manifest
    entry (with `of`, the measured run's path)."""
    spec = BENCHMARKED[(run["series"], target)]
    path = root / "benchmark" / Path(run["path"]).name
    path.mkdir(parents=True)
    headline = {k: v for k, v in spec.items() if k != "latency"}
    for mode, latencies in spec["latency"].items():
        for batch, latency in zip(BATCHES, latencies):
            ms = latency * LATENCY_JITTER[seed]
            headline[f"latency_{mode}_b{batch}_ms"] = ms
            headline[f"throughput_{mode}_b{batch}"] = 1000 * batch / ms
    headline.update(
        params_total=PARAMS_TOTAL, params_nonzero=PARAMS_TOTAL, params_effective_nonzero=1,
        weight_sparsity_effective=0.0, memory_method="rss_sampled", energy_mj_per_sample=None,
        energy_method=None, energy_unavailable_reason=ENERGY_REASON, device="cpu",
        threads=BENCHMARK_THREADS, top1=run["top1"], top5=min(1.0, run["top1"] + 0.05))
    (path / "config.json").write_text(json.dumps({"kind": "benchmark", "hash": path.name,
                                                  "result": False}))
    (path / "metrics.json").write_text(json.dumps(headline))
    return {"kind": "benchmark", "path": str(path), "of": run["path"], "label": run["label"],
            "result": False}


def _targets(name: str, top1s: dict | None = None) -> list[float]:
    return [t for (series, t) in (top1s or TOP1) if series == name]


def _write_study(tmp_path: Path, legacy: bool = False, lottery: bool = False) -> list[Path]:
    """A train manifest (dense and slimming's pretraining, which must be ignored), one
    manifest per recovered method (each listing its prune parents, which must be ignored),
    with `lottery` one of the lottery tickets and their controls, a benchmark manifest
    (dense, mag @ 0.9 and l1f @ 0.5), a prune manifest, and the train manifest again. With
    `legacy`, configs and manifest entries are written in the shape before `control`."""
    root, jobs = tmp_path / "runs", tmp_path / "jobs"
    jobs.mkdir(parents=True)
    top1s = {**TOP1, **LOTTERY_TOP1} if lottery else TOP1
    train = [_write_run(root, "dense", 0.0, s, legacy=legacy) for s in SEEDS]
    benchmarks = [_write_benchmark(root, run, 0.0, s) for s, run in zip(SEEDS, train)]
    train += [_write_intermediate(root, "train", "slim_pretrain", s, legacy) for s in SEEDS]
    files = [jobs / "train.json"]
    files[0].write_text(json.dumps({"command": "train", "study": STUDY, "runs": train}))
    for name, spec in (ALL if lottery else METHODS).items():
        if name == DENSE:
            continue
        runs = []
        for seed in SEEDS:
            for target in _targets(name, top1s):
                run = _write_run(root, name, target, seed, legacy=legacy, top1s=top1s)
                if (name, target) in BENCHMARKED:
                    benchmarks.append(_write_benchmark(root, run, target, seed))
                runs.append(run)
        runs.append({"kind": "prune", "path": str(root / "prune" / "x")})  # intermediate
        files.append(jobs / f"{name}.json")
        files[-1].write_text(json.dumps({"command": spec.command, "study": STUDY,
                                         "runs": runs}))
    files.append(jobs / "benchmark.json")
    files[-1].write_text(json.dumps({"command": "benchmark", "study": STUDY,
                                     "runs": benchmarks}))
    prune = jobs / "prune.json"
    prune.write_text(json.dumps({"command": "prune", "runs": [
        _write_intermediate(root, "prune", "slimming", s, legacy) for s in SEEDS]}))
    return [*files, prune, files[0]]  # train listed twice: runs are de-duplicated


@pytest.fixture
def manifests(tmp_path: Path) -> list[Path]:
    return _write_study(tmp_path)


def _without_benchmarks(manifests: list[Path]) -> list[Path]:
    return [m for m in manifests if json.loads(m.read_text())["command"] != "benchmark"]



@pytest.fixture
def runs(manifests) -> pd.DataFrame:
    return collect_runs(manifests)


@pytest.fixture
def summary(runs) -> pd.DataFrame:
    return summarise(runs)


def _expected(label: str, target: float) -> tuple[float, float]:
    values = TOP1[(label, target)]
    return float(np.mean(values)), float(np.std(values, ddof=1))


def _at(table: pd.DataFrame, name: str, target: float) -> pd.DataFrame:
    """The rows of series `name` at `target`, matched on the column its kind of target lives
    in."""
    column = "channel_sparsity" if ALL[name].structured else "target_sparsity"
    return table[(table["series"] == name) & (table[column] == target)]


def _rows(text: str) -> list[list[str]]:
    """The cells of the first markdown table in `text` (header row first)."""
    section = text.lstrip("\n").split("\n\n", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|") and "---" not in line]


def _table(md: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table under `### heading` (header row first)."""
    return _rows(md.split(f"### {heading}\n", 1)[1])


# ---------------------------------------------------------------- aggregation


def test_collect_runs_rows_and_columns(runs):
    assert len(runs) == len(TOP1) * len(SEEDS)
    assert list(runs.columns[: len(LEADING_COLUMNS)]) == LEADING_COLUMNS
    assert list(runs.columns[-2:]) == ["run_dir", "hash"]
    assert runs["run_dir"].is_unique
    resorted = runs.sort_values(SORT_KEYS, na_position="last")[SORT_KEYS].reset_index(drop=True)
    assert runs[SORT_KEYS].equals(resorted)
    row = _at(runs, "mag", 0.9)
    row = row[row["seed"] == 1]
    assert row["top1"].item() == 0.86
    assert row["params_remaining_frac"].item() == pytest.approx(0.1)
    assert row["hash"].item() == "mag090s1"
    assert row["recovery"].item() == "finetune"
    distilled = _at(runs, "mag+distill", 0.9)
    assert distilled["recovery"].tolist() == ["distill", "distill"]
    assert distilled["label"].tolist() == ["mag", "mag"]  # the plain label; series says it
    assert runs.loc[runs["label"] == DENSE, "recovery"].isna().all()
    assert runs["control"].isna().all()  # no lottery runs in this study
    assert sorted(set(runs["series"])) == sorted(METHODS)
    assert sorted(set(runs["label"])) == [DENSE, "l1f", "mag", "rnd"]


def test_structured_runs_keep_their_channel_target(runs):
    l1f = _at(runs, "l1f", 0.5)
    assert len(l1f) == 2 and l1f["target_sparsity"].isna().all()
    assert l1f["param_reduction"].tolist() == pytest.approx([0.75, 0.75])
    assert l1f["macs_reduction"].tolist() == pytest.approx([0.70, 0.70])
    assert runs.loc[runs["channel_sparsity"].isna(), "target_sparsity"].notna().all()


def test_pretrain_and_prune_runs_are_excluded(manifests, runs):
    assert "slim_pretrain" not in set(runs["label"]) and "slimming" not in set(runs["label"])
    # the run's own config decides, not just what the manifest entry says
    train = json.loads(manifests[0].read_text())
    for entry in train["runs"]:
        entry.pop("result")
    manifests[0].write_text(json.dumps(train))
    assert collect_runs([manifests[0]])["label"].tolist() == [DENSE, DENSE]
    with pytest.raises(ConfigError, match="prune.json"):
        collect_runs([manifests[-2]])  # only prune runs: empty table


def test_benchmark_headlines_join_the_measured_runs(runs):
    extra = runs.columns[len(LEADING_COLUMNS):-len(TRAILING_COLUMNS)].tolist()
    assert extra == sorted(extra)
    assert {"macs_effective", "latency_dense_b128_ms", "throughput_sparse_csr_b1",
            "energy_unavailable_reason", "device", "train_time_s"} <= set(extra)
    assert "channels" not in runs.columns and runs["threads"].eq(2).all()
    # keys the result row already has keep the run's value; the benchmark's get a prefix
    assert {"benchmark_top1", "benchmark_top5", "benchmark_params_total",
            "benchmark_threads"} <= set(extra) and "benchmark_macs_dense" not in extra
    measured = pd.concat([_at(runs, *key) for key in BENCHMARKED])
    assert len(measured) == len(BENCHMARKED) * len(SEEDS)
    assert measured["benchmark_threads"].eq(BENCHMARK_THREADS).all()
    assert measured["benchmark_top1"].tolist() == measured["top1"].tolist()
    assert measured["benchmark_params_total"].eq(PARAMS_TOTAL).all()
    mag = _at(runs, "mag", 0.9)
    assert mag["latency_dense_b1_ms"].tolist() == [0.75, 1.25]
    assert mag["macs_effective"].eq(200_000).all() and mag["device"].eq("cpu").all()
    assert _at(runs, "l1f", 0.5)["latency_sparse_csr_b1_ms"].isna().all()  # mode not run
    others = runs[~runs["run_dir"].isin(measured["run_dir"])]
    assert len(others) == len(runs) - len(measured)
    assert others[["macs_dense", "benchmark_top1", "latency_dense_b1_ms"]].isna().all().all()
    assert others["device"].isna().all()


def test_summary_mean_std_n_and_delta(summary):
    assert len(summary) == len(TOP1)
    dense_mean, _ = _expected(DENSE, 0.0)
    for key in TOP1:
        mean, std = _expected(*key)
        row = _at(summary, *key)
        assert row["n"].item() == 2
        assert row["top1_mean"].item() == pytest.approx(mean)
        assert row["top1_std"].item() == pytest.approx(std)
        assert row["delta_top1_vs_dense"].item() == pytest.approx(mean - dense_mean)
    assert _at(summary, "mag", 0.9)["latency_dense_b1_ms_mean"].item() == pytest.approx(1.0)
    assert _at(summary, "mag", 0.5)["latency_dense_b1_ms_mean"].isna().all()
    assert _at(summary, "mag", 0.9)["energy_unavailable_reason"].item() == ENERGY_REASON
    assert _at(summary, "mag", 0.5)["device"].isna().all()
    assert _at(summary, "mag", 0.9)["weight_sparsity_mean"].item() == pytest.approx(0.9005)
    assert "seed_mean" not in summary.columns


def test_structured_rows_are_summarised_by_channel_sparsity(summary):
    l1f = summary[summary["series"] == "l1f"]
    assert l1f["channel_sparsity"].tolist() == [0.25, 0.5]
    assert l1f["target_sparsity"].isna().all() and l1f["n"].tolist() == [2, 2]
    assert l1f["param_reduction_mean"].tolist() == pytest.approx([0.4375, 0.75])
    assert l1f["macs_reduction_mean"].tolist() == pytest.approx([0.3875, 0.70])


def test_single_seed_std_is_nan_and_printed_as_dash(runs, tmp_path):
    summary = summarise(runs[runs["seed"] == 0])
    assert summary["n"].eq(1).all() and summary["top1_std"].isna().all()
    write_tables(runs, summary, tmp_path / "t")
    assert "89.00 ± –" in (tmp_path / "t" / "summary.md").read_text()
    assert headline_metrics(summary)[STUDY]["mag"]["s0.50"]["top1_std"] is None


def test_write_tables_and_markdown(runs, summary, tmp_path):
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
    assert "-66.00" in md  # rnd at 0.9: 25 - 91 pp
    rows = _table(md, "Dense and unstructured methods (weight sparsity)")
    assert rows[0][:4] == ["Method", "Target sparsity", "Achieved sparsity", "Zero params (all)"]
    labels = [r[0] for r in rows[1:]]
    assert labels == [DENSE, "mag", "mag", "mag+distill", "rnd", "rnd"]
    assert summary_markdown(read_tables(tmp_path)[1]) == md  # the same from the CSV


def test_structured_table_shows_requested_and_achieved(summary):
    rows = _table(summary_markdown(summary), "Structured methods (channels removed)")
    assert rows[0] == ["Method", "Channels removed (target)", "Params removed (achieved)",
                       "MACs removed (achieved)", "Top-1 (%)", "Top-5 (%)",
                       "Δ top-1 vs dense (pp)", "n"]
    assert [r[:4] for r in rows[1:]] == [
        ["l1f", "0.25", "0.4375", "0.3875"],
        ["l1f", "0.50", "0.7500", "0.7000"],
        ["l1f+distill", "0.50", "0.7500", "0.7000"],
    ]
    assert rows[2][4:] == ["86.00 ± 1.41", "91.00 ± 1.41", "-5.00", "2"]


def test_finetune_vs_distill_pairs_the_right_rows(summary):
    pairs = recovery_pairs(summary, STUDY)
    assert list(zip(pairs["label"], pairs["target"])) == [("l1f", "c0.50"), ("mag", "s0.90")]
    assert list(zip(pairs["series_ft"], pairs["series_kd"])) == [("l1f", "l1f+distill"),
                                                                 ("mag", "mag+distill")]
    assert pairs["top1_gain"].tolist() == pytest.approx([0.02, 0.03])
    rows = _table(summary_markdown(summary), "Fine-tuning vs. distillation")
    assert rows[0] == ["Method", "Target", "Top-1 fine-tuned (%)", "Top-1 distilled (%)",
                       "Distilled − fine-tuned (pp)"]
    assert rows[1:] == [
        ["l1f", "channels removed 0.50", "86.00 ± 1.41", "88.00 ± 2.83", "+2.00"],
        ["mag", "weight sparsity 0.90", "83.00 ± 4.24", "86.00 ± 2.83", "+3.00"],
    ]


def test_tables_a_study_lacks_are_left_out(summary):
    finetuned_only = summary[summary["recovery"] != "distill"]
    md = summary_markdown(finetuned_only)
    assert "Fine-tuning vs. distillation" not in md and recovery_pairs(finetuned_only, STUDY).empty
    unstructured_only = summary[summary["channel_sparsity"].isna()]
    assert "### Structured methods" not in summary_markdown(unstructured_only)


HARDWARE_HEADER = ["Method", "Target", "Size dense (MB)", "Size sparse-encoded (MB)",
                   "MACs dense kernels (M)", "MACs effective (M)", "Peak mem (MB)",
                   "Avg mem (MB)", "Latency b1 (ms)", "Latency b128 (ms)",
                   "Speed-up b128 (paired)", "Energy (mJ/sample)", "Top-1 (%)", "Top-5 (%)"]


def test_hardware_table_shows_costs_and_changes_vs_dense(summary):
    md = summary_markdown(summary)
    rows = _table(md, "Hardware cost (benchmark)")
    assert rows[0] == HARDWARE_HEADER
    assert rows[1:] == [  # benchmarked rows only, dense first
        ["dense", "weight sparsity 0.00", "1.00", "0.90", "2.00", "2.00", "4.00", "3.00",
         "1.00", "10.00", "–", "n/a", "91.00", "96.00"],
        # channels removed: every cost shrinks (0.24 / 0.90 − 1 = −73 %)
        ["l1f", "channels removed 0.50", "0.25 (−75 %)", "0.24 (−73 %)", "0.60 (−70 %)",
         "0.60 (−70 %)", "1.00 (−75 %)", "0.80 (−73 %)", "0.50 (−50 %)", "4.00 (−60 %)",
         "–", "n/a", "86.00 (−5.5 %)", "91.00 (−5.2 %)"],
        # masked: dense size, MACs, memory and latency; only the encoding and effective MACs
        ["mag", "weight sparsity 0.90", "1.00 (±0 %)", "0.25 (−72 %)", "2.00 (±0 %)",
         "0.20 (−90 %)", "4.00 (±0 %)", "3.00 (±0 %)", "1.00 (±0 %)", "10.00 (±0 %)", "–",
         "n/a", "83.00 (−8.8 %)", "88.00 (−8.3 %)"],
    ]
    table = hardware_table(summary, STUDY)
    assert table.count(ENERGY_REASON) == 1 and f"Energy n/a: {ENERGY_REASON}." in table
    assert "on cpu" in table and "(rss_sampled)" in table


def test_hardware_table_with_energy_or_without_dense(summary):
    measured = summary.assign(energy_mj_per_sample_mean=summary["macs_dense_mean"] / 1e6)
    table = hardware_table(measured, STUDY)
    assert "Energy n/a" not in table and ENERGY_REASON not in table
    energy = HARDWARE_HEADER.index("Energy (mJ/sample)")
    assert [r[energy] for r in _rows(table)[1:]] == ["2.00", "0.60 (−70 %)", "2.00 (±0 %)"]
    rows = _rows(hardware_table(summary[summary["label"] != DENSE], STUDY))
    assert [r[:4] for r in rows[1:]] == [  # nothing to compare with: values alone
        ["l1f", "channels removed 0.50", "0.25", "0.24"],
        ["mag", "weight sparsity 0.90", "1.00", "0.25"]]


def test_paired_speedups_replace_separately_timed_latencies(summary):
    """A benchmark's paired speed-up (timed alternately with the dense model in one process)
    is what the hardware table shows and what the modes table compares with."""
    labels = summary["series"]
    paired = summary.assign(speedup_vs_dense_b128_mean=labels.map(
        {DENSE: 1.0, "l1f": 3.0, "mag": 0.98}))
    column = HARDWARE_HEADER.index("Speed-up b128 (paired)")
    assert [r[column] for r in _rows(hardware_table(paired, STUDY))[1:]] == [
        "1.00×", "3.00×", "0.98×"]
    rows = _rows(modes_table(paired, STUDY))
    vs_dense_model = rows[0].index("b128 speed-up vs dense model")
    by_mode = {(r[0], r[2]): r[vs_dense_model] for r in rows[1:]}
    assert by_mode[("l1f", "dense")] == "3.00×" and by_mode[("mag", "dense")] == "0.98×"


def test_modes_table_speedups_over_own_and_baseline_dense(summary):
    rows = _table(summary_markdown(summary), "Execution modes (benchmark latency)")
    assert rows[0] == ["Method", "Target", "Mode",
                       "Latency b1 (ms)", "b1 speed-up vs own dense", "b1 speed-up vs dense model",
                       "Latency b128 (ms)", "b128 speed-up vs own dense",
                       "b128 speed-up vs dense model"]
    assert [r[:3] for r in rows[1:]] == [
        ["dense", "weight sparsity 0.00", "dense"], ["dense", "weight sparsity 0.00", "sparse_csr"],
        ["l1f", "channels removed 0.50", "dense"],  # sparse_csr did not run: no row
        ["mag", "weight sparsity 0.90", "dense"], ["mag", "weight sparsity 0.90", "sparse_csr"],
    ]
    assert [r[3:] for r in rows[1:]] == [
        ["1.00", "1.00×", "1.00×", "10.00", "1.00×", "1.00×"],
        ["3.00", "0.33×", "0.33×", "40.00", "0.25×", "0.25×"],
        ["0.50", "1.00×", "2.00×", "4.00", "1.00×", "2.50×"],  # channel pruning: real speed-up
        ["1.00", "1.00×", "1.00×", "10.00", "1.00×", "1.00×"],  # masked on dense kernels: none
        ["2.00", "0.50×", "0.50×", "5.00", "2.00×", "2.00×"],
    ]


def test_no_benchmark_no_hardware_tables(manifests):
    summary = summarise(collect_runs(_without_benchmarks(manifests)))
    assert "macs_dense_mean" not in summary and "device" not in summary
    assert hardware_table(summary, STUDY) is None and modes_table(summary, STUDY) is None
    md = summary_markdown(summary)
    assert "Hardware cost" not in md and "Execution modes" not in md


def test_outputs_do_not_depend_on_manifest_order(manifests, tmp_path):
    for name, order in (("a", manifests), ("b", manifests[::-1])):
        runs = collect_runs(order)
        write_tables(runs, summarise(runs), tmp_path / name)
    for table in ("runs.csv", "summary.csv", "summary.md"):
        assert (tmp_path / "a" / table).read_bytes() == (tmp_path / "b" / table).read_bytes()


def test_headline_metrics_keys(summary):
    headline = headline_metrics(summary)
    assert set(headline[STUDY]) == set(METHODS)
    assert set(headline[STUDY]["mag"]) == {"s0.50", "s0.90"}
    assert set(headline[STUDY]["mag+distill"]) == {"s0.90"}
    assert set(headline[STUDY]["l1f"]) == {"c0.25", "c0.50"}
    assert headline[STUDY]["l1f+distill"]["c0.50"]["top1_mean"] == pytest.approx(0.88)
    assert headline[STUDY]["dense"]["s0.00"]["top1_mean"] == pytest.approx(0.91)
    json.dumps(headline, allow_nan=False)


def test_bad_manifests_raise_config_error(tmp_path, manifests):
    with pytest.raises(ConfigError, match="missing.json"):
        collect_runs([tmp_path / "missing.json"])
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"command": "finetune", "runs": []}))
    with pytest.raises(ConfigError, match="empty.json"):
        collect_runs([empty])
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


# ---------------------------------------------------------------- recovery, control, series


def test_series_names_are_composed_from_label_recovery_and_control():
    assert series_name("mag") == "mag"
    assert series_name("mag", "finetune") == "mag"
    assert series_name("mag", "distill") == "mag+distill"
    assert series_name("lottery", None, "ticket") == "lottery"
    assert series_name("lottery", None, "reinit") == "lottery_reinit"
    assert series_name("mag", float("nan"), float("nan")) == "mag"  # null cells from CSV
    check_kind("mag", float("nan"), None)
    with pytest.raises(ConfigError, match="recovery 'prune'"):
        check_kind("mag", "prune", None)
    with pytest.raises(ConfigError, match="control 'shuffle'"):
        check_kind("mag", None, "shuffle")


def test_runs_and_summary_have_recovery_and_control_columns(runs, summary):
    assert ID_COLUMNS[-6:] == ["recovery", "control", "budget_kind", "budget_value",
                               "budget_batch_size", "series"]
    assert list(summary.columns[:13]) == ["study", "dataset", "model", "series", "label",
                                          "method", "target_sparsity", "channel_sparsity",
                                          "recovery", "control", "budget_kind", "budget_value",
                                          "budget_batch_size"]
    assert set(zip(summary["series"], summary["label"], summary["recovery"].fillna("-"))) == {
        (DENSE, DENSE, "-"), ("mag", "mag", "finetune"), ("mag+distill", "mag", "distill"),
        ("rnd", "rnd", "finetune"), ("l1f", "l1f", "finetune"),
        ("l1f+distill", "l1f", "distill")}


@pytest.mark.parametrize("record, expected", [
    # a distilled run: its label lost "+distill", which its recovery says was added
    ({"kind": "recover", "method": "snip", "label": "snip+distill", "recovery": "distill"},
     {"method": "snip", "label": "snip", "recovery": "distill", "control": None}),
    ({"kind": "recover", "method": "snip", "label": "snip", "recovery": "finetune"},
     {"method": "snip", "label": "snip", "recovery": "finetune", "control": None}),
    ({"kind": "lottery", "method": "lottery", "label": "lth", "recovery": None},
     {"method": "lottery", "label": "lth", "recovery": None, "control": "ticket"}),
    ({"kind": "lottery_reinit", "method": "lottery_reinit", "label": "lth_reinit",
      "recovery": None},
     {"method": "lottery", "label": "lth", "recovery": None, "control": "reinit"}),
    ({"kind": "train", "method": "dense", "label": "dense", "recovery": None},
     {"method": "dense", "label": "dense", "recovery": None, "control": None}),
    # suffix text the record's own recovery and kind do not account for stays
    ({"kind": "recover", "method": "snip", "label": "my_reinit", "recovery": "finetune"},
     {"method": "snip", "label": "my_reinit", "recovery": "finetune", "control": None}),
    ({"kind": "recover", "method": "snip", "label": "my_reinit+distill",
      "recovery": "distill"},
     {"method": "snip", "label": "my_reinit", "recovery": "distill", "control": None}),
    ({"kind": "recover", "method": "snip", "label": "a+distill", "recovery": "finetune"},
     {"method": "snip", "label": "a+distill", "recovery": "finetune", "control": None}),
    ({"kind": "lottery", "method": "lottery", "label": "lth_reinit", "recovery": None},
     {"method": "lottery", "label": "lth_reinit", "recovery": None, "control": "ticket"}),
    ({"kind": "lottery_reinit", "method": "lottery_reinit", "label": "lth_reinit_reinit"},
     {"method": "lottery", "label": "lth_reinit", "control": "reinit"}),
    # a record in the current shape is left as it is, whatever its label looks like
    ({"kind": "lottery_reinit", "method": "lottery", "label": "my_reinit", "recovery": None,
      "control": "reinit"},
     {"method": "lottery", "label": "my_reinit", "recovery": None, "control": "reinit"}),
    ({"kind": "recover", "method": "snip", "label": "x+distill", "recovery": "distill",
      "control": None},
     {"method": "snip", "label": "x+distill", "recovery": "distill", "control": None}),
])
def test_legacy_records_are_normalised_to_the_current_shape(record, expected):
    before = dict(record)
    out = normalise_legacy_record({**record, "path": "p", "seed": 3})
    assert out == {"kind": record["kind"], "path": "p", "seed": 3, **expected}
    assert record == before  # not changed in place


def test_legacy_runs_give_the_same_tables_as_current_ones(tmp_path):
    """Run directories and manifests written before `control` (label "mag+distill",
    "lt_reinit", method "lottery_reinit") aggregate to the same tables, headline and
    figures as the same runs written now."""
    made = {}
    for legacy in (False, True):
        root = tmp_path / ("legacy" if legacy else "current")
        runs = collect_runs(_write_study(root, legacy=legacy, lottery=True))
        made[legacy] = (runs, summarise(runs))
    (runs, summary), (old_runs, old_summary) = made[False], made[True]
    assert old_runs.columns.tolist() == runs.columns.tolist()
    pd.testing.assert_frame_equal(old_runs.drop(columns="run_dir"),
                                  runs.drop(columns="run_dir"))
    pd.testing.assert_frame_equal(old_summary, summary)
    assert summary_markdown(old_summary) == summary_markdown(summary)
    assert headline_metrics(old_summary) == headline_metrics(summary)
    control = _at(runs, "lt_reinit", 0.8)
    assert control[["label", "method", "control"]].drop_duplicates().values.tolist() == [
        ["lt", "lottery", "reinit"]]
    assert set(headline_metrics(summary)[STUDY]) == set(ALL)
    # the lottery table puts each ticket beside its control, by label and target
    rows = _table(summary_markdown(summary), "Lottery tickets vs. random reinitialisation")
    header = rows[0]
    lottery = [dict(zip(header, r)) for r in rows[1:]]
    assert [(r["Method"], r["Weights remaining (%)"]) for r in lottery] == [
        (DENSE, "100.0"), ("lt", "50.0"), ("lt", "20.0")]
    assert [(r["Ticket top-1 (%)"], r["Control top-1 (%)"]) for r in lottery[1:]] == [
        ("92.00 ± 1.41", "89.00 ± 1.41"), ("90.00 ± 0.00", "82.00 ± 2.83")]
    assert lottery[2]["Control early stop (iter.)"] == "300 ± 141"
    for frame in (summary, old_summary):
        legend = [line.get_label() for line in lottery_figure(frame, STUDY).axes[0].get_lines()]
        assert legend == ["lt (ticket)", "lt (random reinit)"]
        lines = _lines(accuracy_figure(frame, STUDY))
        assert {"lt", "lt_reinit", "mag+distill"} <= set(lines)


def _write_configs(tmp_path: Path, configs: list[dict]) -> Path:
    """One finished run per config (two seeds each) and a manifest listing them."""
    entries = []
    for i, config in enumerate(configs):
        for seed in SEEDS:
            path = tmp_path / "runs" / f"r{i}s{seed}"
            path.mkdir(parents=True)
            meta = {"study": STUDY, "dataset": "digits", "model": "mlp",
                    "target_sparsity": 0.5, "channel_sparsity": None, "seed": seed,
                    **config}
            (path / "config.json").write_text(json.dumps(meta))
            (path / "metrics.json").write_text(json.dumps({
                "top1": 0.5 + 0.1 * i + 0.01 * seed, "top5": 1.0, "weight_sparsity": 0.5,
                "params_total": PARAMS_TOTAL, "params_nonzero": PARAMS_TOTAL // 2}))
            entries.append({**meta, "path": str(path)})
    manifest = tmp_path / "jobs.json"
    manifest.write_text(json.dumps({"command": "finetune", "runs": entries}))
    return manifest


def test_current_labels_that_look_like_suffixed_ones_are_kept(tmp_path):
    """A label that ends in "_reinit", or has "+distill" in it, is the label itself when the
    record is in the current shape: the name shown is composed from the columns."""
    dense = {"kind": "train", "method": "dense", "label": DENSE, "recovery": None,
             "control": None, "target_sparsity": 0.0}
    runs = collect_runs([_write_configs(tmp_path, [
        dense,
        {"kind": "recover", "method": "snip", "label": "my_reinit", "recovery": "finetune",
         "control": None},
        {"kind": "recover", "method": "snip", "label": "my_reinit", "recovery": "distill",
         "control": None},
        {"kind": "recover", "method": "wanda", "label": "w+distill", "recovery": "finetune",
         "control": None},
        {"kind": "lottery", "method": "lottery", "label": "lt_reinit", "recovery": None,
         "control": "ticket"},
        {"kind": "lottery_reinit", "method": "lottery", "label": "lt_reinit",
         "recovery": None, "control": "reinit"},
    ])])
    summary = summarise(runs)
    assert list(zip(summary["series"], summary["label"])) == [
        (DENSE, DENSE), ("lt_reinit", "lt_reinit"), ("lt_reinit_reinit", "lt_reinit"),
        ("my_reinit", "my_reinit"), ("my_reinit+distill", "my_reinit"),
        ("w+distill", "w+distill")]
    pairs = recovery_pairs(summary, STUDY)
    assert pairs["label"].tolist() == ["my_reinit"]  # w+distill was not distilled
    assert pairs["top1_gain"].tolist() == pytest.approx([0.1])
    rows = _rows(lottery_table(summary, STUDY))
    assert [r[0] for r in rows[1:]] == [DENSE, "lt_reinit"]
    assert rows[2][2:4] == ["90.50 ± 0.71", "100.50 ± 0.71"]  # ticket, then its control


def test_two_kinds_of_run_shown_under_one_name_are_refused(tmp_path):
    manifest = _write_configs(tmp_path, [
        {"kind": "recover", "method": "snip", "label": "x_reinit", "recovery": "finetune",
         "control": None},
        {"kind": "lottery_reinit", "method": "lottery", "label": "x", "recovery": None,
         "control": "reinit"},
    ])
    with pytest.raises(ConfigError, match="'x_reinit'.*rename one of the labels"):
        collect_runs([manifest])


def test_a_bad_recovery_names_the_run(tmp_path):
    manifest = _write_configs(tmp_path, [
        {"kind": "recover", "method": "snip", "label": "s", "recovery": "retrain",
         "control": None}])
    with pytest.raises(ConfigError, match=r"r0s0.config\.json.*recovery 'retrain'"):
        collect_runs([manifest])


def test_tables_written_before_the_control_column_read_in_the_current_shape(runs, summary,
                                                                             tmp_path):
    """An older table's label was the series name and a control's method lottery_reinit."""
    def legacy(frame):
        old = frame.drop(columns=["control", "series"]).assign(label=frame["series"])
        old.loc[frame["control"] == "reinit", "method"] = "lottery_reinit"
        return old

    assert (runs["recovery"] == "distill").any()
    legacy(runs).to_csv(tmp_path / "runs.csv", index=False)
    legacy(summary).to_csv(tmp_path / "summary.csv", index=False)
    new_runs, new_summary = read_tables(tmp_path)
    columns = ["label", "method", "recovery", "control", "series"]
    for got, want in ((new_runs, runs), (new_summary, summary)):
        pd.testing.assert_frame_equal(got[columns].fillna("-").reset_index(drop=True),
                                      want[columns].fillna("-").reset_index(drop=True),
                                      check_dtype=False)
    runs.drop(columns=["recovery"]).to_csv(tmp_path / "runs.csv", index=False)
    with pytest.raises(ConfigError, match="runs.csv.*no recovery column"):
        read_tables(tmp_path)


def test_sparsity_keys():
    from prunebench.analysis.aggregate import channel_key, sparsity_key

    assert [sparsity_key(s) for s in (0.0, 0.8, 0.95, 0.995)] == \
        ["s0.00", "s0.80", "s0.95", "s0.995"]
    assert [channel_key(c) for c in (0.5, 0.125)] == ["c0.50", "c0.125"]


# ---------------------------------------------------------------- plots


def _lines(fig) -> dict:
    return {line.get_label(): line for line in fig.axes[0].get_lines()}


def test_accuracy_figure_has_one_line_per_unstructured_method_and_dense(summary):
    ax = accuracy_figure(summary, STUDY).axes[0]
    # mag, mag+distill, rnd and the dense reference; rnd's 25 % at 0.9 has collapsed, so it
    # is a marker on the lower edge, which the legend explains
    assert [t.get_text() for t in ax.get_legend().get_texts()] == \
        ["dense (n=2)", "mag", "mag+distill", "rnd", CLIPPED_LEGEND]
    assert len([line for line in ax.get_lines() if not line.get_label().startswith("_")]) == 5
    mag = _lines(accuracy_figure(summary, STUDY))["mag"]
    assert mag.get_ydata().tolist() == pytest.approx([90.0, 83.0])
    assert mag.get_xdata().tolist() == pytest.approx([0.5005, 0.9005])


def test_sparsity_figures_leave_structured_methods_out(runs, summary):
    for fig in (params_figure(summary, STUDY), delta_figure(summary, STUDY)):
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert "mag" in labels and not {"l1f", "l1f+distill"} & set(labels)
    assert set(_lines(curves_figure(runs, STUDY))) == {"dense", "mag @ 0.9", "mag+distill @ 0.9",
                                                       "rnd @ 0.9"}


def test_accuracy_vs_params_puts_every_method_on_one_axis(summary):
    lines = _lines(accuracy_vs_params_figure(summary, STUDY))
    assert set(lines) == {"dense (n=2)", *(m for m in METHODS if m != DENSE),
                          "_rnd below the axis", CLIPPED_LEGEND}  # rnd @ 0.9: 25 %
    assert lines["l1f"].get_xdata().tolist() == pytest.approx([0.5625, 0.25])
    assert lines["l1f"].get_ydata().tolist() == pytest.approx([89.0, 86.0])
    assert lines["l1f"].get_linestyle() == "-." and lines["mag"].get_linestyle() == "-"
    assert lines["mag"].get_xdata().tolist() == pytest.approx([0.5, 0.1])
    assert lines["mag+distill"].get_xdata().tolist() == pytest.approx([0.1])


def test_accuracy_vs_macs_keeps_masked_methods_at_full_cost(summary):
    lines = _lines(accuracy_vs_macs_figure(summary, STUDY))
    assert lines["mag"].get_xdata().tolist() == pytest.approx([1.0, 1.0])
    assert lines["l1f"].get_xdata().tolist() == pytest.approx([0.6125, 0.30])


def test_pareto_front_is_the_upper_left_envelope():
    x, y = pareto_front([2.0, 1.0, 1.0, 3.0, 0.5, 4.0], [55, 50, 60, 70, 40, 65])
    assert x.tolist() == [0.5, 1.0, 3.0] and y.tolist() == [40, 60, 70]


@pytest.mark.parametrize("figure", [accuracy_figure, delta_figure, params_figure,
                                    accuracy_vs_params_figure, pareto_macs_figure])
def test_a_study_of_many_methods_keeps_its_whole_legend_in_the_image(summary, figure):
    """Twenty unstructured methods (a study with distilled variants has that many): every
    legend entry is drawn inside the saved image and none over the data."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    mag = summary[summary["series"] == "mag"]
    many = pd.concat([summary] + [mag.assign(label=f"method_{i:02d}", method=f"method_{i:02d}",
                                             series=f"method_{i:02d}")
                                  for i in range(20)], ignore_index=True)
    fig = figure(many, STUDY)
    FigureCanvasAgg(fig).draw()
    ax, legend = fig.axes[0], fig.axes[0].get_legend()
    assert {f"method_{i:02d}" for i in range(20)} <= {t.get_text() for t in legend.get_texts()}
    box, image, plot = legend.get_window_extent(), fig.bbox, ax.get_window_extent()
    assert image.x0 <= box.x0 and box.x1 <= image.x1 and image.y0 <= box.y0 and box.y1 <= image.y1
    assert box.x0 >= plot.x1  # beside the axes, not over the lines


def test_pareto_macs_marks_dense_kernel_and_effective_macs(summary):
    ax = pareto_macs_figure(summary, STUDY).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == \
        ["Pareto front", "dense", "l1f", "mag", EFFECTIVE_LEGEND]
    assert ax.get_xscale() == "log"
    assert lines["dense"].get_marker() == "*" and lines["dense"].get_color() == "black"
    assert lines["mag"].get_xdata().tolist() == pytest.approx([2.0])  # the dense model's MACs
    assert lines["mag"].get_ydata().tolist() == pytest.approx([83.0])
    assert lines["l1f"].get_xdata().tolist() == pytest.approx([0.6])
    effective = lines["_mag effective"]
    assert effective.get_xdata().tolist() == pytest.approx([0.2])
    assert effective.get_markerfacecolor() == "none"
    assert effective.get_color() == lines["mag"].get_color()
    assert "_l1f effective" not in lines  # channels removed: nothing masked to skip
    front = lines["Pareto front"]
    assert front.get_drawstyle() == "steps-post" and front.get_color() == "grey"
    assert front.get_xdata().tolist() == pytest.approx([0.6, 2.0])
    assert front.get_ydata().tolist() == pytest.approx([86.0, 91.0])


def test_pareto_latency_uses_the_largest_batch(summary):
    ax = pareto_latency_figure(summary, STUDY).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert "batch of 128" in ax.get_xlabel() and ax.get_xscale() == "log"
    assert lines["mag"].get_xdata().tolist() == pytest.approx([10.0])
    assert lines["dense"].get_xdata().tolist() == pytest.approx([10.0])
    assert lines["l1f"].get_xdata().tolist() == pytest.approx([4.0])
    assert lines["Pareto front"].get_xdata().tolist() == pytest.approx([4.0, 10.0])
    assert not any(label.endswith(" effective") for label in lines)


def test_pareto_figures_without_benchmarks_are_refused_not_drawn_empty(manifests, tmp_path):
    runs = collect_runs(_without_benchmarks(manifests))
    summary = summarise(runs)
    for figure in (pareto_macs_figure, pareto_latency_figure):
        with pytest.raises(ConfigError, match="needs benchmark results"):
            figure(summary, STUDY)
    paths = write_plots(runs, summary, tmp_path)  # what the tables can fill
    assert [p.name for p in paths] == [f"{STUDY}_{n}.png" for n in PLOTS
                                       if n not in ("pareto_macs", "pareto_latency",
                                                    "lottery_tickets")]
    with pytest.raises(ConfigError, match="pareto_macs needs benchmark results"):
        write_plots(runs, summary, tmp_path / "asked", figures=["pareto_macs"])
    assert not (tmp_path / "asked").exists()


def test_curves_figure_averages_seeds(runs):
    lines = _lines(curves_figure(runs, STUDY))
    assert lines["mag @ 0.9"].get_ydata()[-1] == pytest.approx(83.0)  # seed mean, last epoch


SPARSITY_AXES = ("accuracy_vs_sparsity", "delta_vs_dense", "params_remaining")


@pytest.mark.parametrize("keep, left_out", [
    ("all", ("lottery_tickets",)),
    ("structured only", ("lottery_tickets", *SPARSITY_AXES)),
    ("unstructured only", ("lottery_tickets",)),
])
def test_write_plots_gives_nonblank_pngs(runs, tmp_path, keep, left_out):
    """Every figure the tables can fill, and only those: no lottery figure without tickets,
    no sparsity axis without an unstructured method."""
    import matplotlib.image

    structured = runs["series"].isin(STRUCTURED)
    runs = {"all": runs, "structured only": runs[structured],
            "unstructured only": runs[runs["channel_sparsity"].isna()]}[keep]
    paths = write_plots(runs, summarise(runs), tmp_path)
    assert [p.name for p in paths] == [f"{STUDY}_{n}.png" for n in PLOTS if n not in left_out]
    assert sorted(tmp_path.glob("*.png")) == sorted(paths)
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
        assert image[..., :3].std() > 0.01
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_plot_names_are_listed_once():
    """`names.PLOTS` is the one list: the figures written, the report's sections and the
    workflow's plot outputs (common.smk imports the rules' groups of it) all follow it."""
    from prunebench.analysis.names import BUDGET_PLOTS, PLOT_GROUPS

    assert set(FIGURES) == set(PLOTS)  # the budget figure apart
    assert set(TITLES) == set(CAPTIONS) == set(PLOTS) | set(BUDGET_PLOTS)
    # the workflow's plot rules, one per group, draw every figure once
    grouped = [name for names in PLOT_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(PLOTS + BUDGET_PLOTS)
    smk = (Path(__file__).parents[1] / "workflow" / "rules" / "common.smk").read_text()
    assert re.search(r"^from prunebench\.analysis\.names import PLOT_GROUPS$", smk,
                     re.MULTILINE)
    assert not re.search(r"^PLOTS\s*=", smk, re.MULTILINE)


def test_the_workflow_imports_the_plot_names_without_pandas_or_matplotlib():
    import subprocess
    import sys

    code = ("import sys; from prunebench.analysis.names import PLOTS; "
            "print(len(PLOTS), sorted({m.split('.')[0] for m in sys.modules} "
            "& {'pandas', 'matplotlib', 'numpy', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"{len(PLOTS)} []"


# ---------------------------------------------------------------- report and CLI


def _links(report: str) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", report)


def test_cli_end_to_end_and_report(manifests, tmp_path, capsys):
    results = tmp_path / "results"
    listing = tmp_path / "manifests.txt"
    listing.write_text("\n".join(str(m) for m in manifests[1:]) + "\n# comment\n\n")
    assert main(["aggregate", str(manifests[0]), "--manifest-list", str(listing),
                 "--out", str(results / "tables"), "--metrics", str(results / "metrics.json")]) == 0
    n_runs = len(TOP1) * len(SEEDS)
    assert len(pd.read_csv(results / "tables" / "runs.csv")) == n_runs
    headline = json.loads((results / "metrics.json").read_text())[STUDY]
    assert headline["rnd"]["s0.90"]["top1_mean"] == pytest.approx(0.25)
    assert headline["l1f"]["c0.50"]["top1_mean"] == pytest.approx(0.86)
    # one headline file per series, named as the tables name it
    assert main(["headline", str(results / "metrics.json"), "--out",
                 str(results / "headline")]) == 0
    files = sorted(p.name for p in (results / "headline").glob("*.json"))
    assert files == sorted(f"{name}.json" for name in METHODS if name != DENSE)
    assert json.loads((results / "headline" / "mag.json").read_text())["at_target"] == "s0.50"
    assert json.loads((results / "headline" / "mag+distill.json").read_text())[
        "removed_within_1pt"] is None  # 86 % at 0.9: five points below dense
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
    # every figure but the lottery one: this study has no lottery runs
    assert sorted(images) == sorted(f"plots/{STUDY}_{name}.png" for name in PLOTS
                                    if name != "lottery_tickets")
    assert all(not Path(x).is_absolute() and (results / x).is_file() for x in links)
    assert "tables/runs.csv" in links and f"{n_runs} runs" in text and "83.00 ± 4.24" in text
    assert "Channels removed (target)" in text and "Distilled − fine-tuned (pp)" in text
    assert "Accuracy vs. parameters remaining" in text and "Accuracy vs. MACs remaining" in text
    assert "### Hardware cost (benchmark)" in text and "0.25 (−72 %)" in text
    assert "### Execution modes (benchmark latency)" in text and "2.50×" in text
    assert text.count(ENERGY_REASON) == 1
    assert "Accuracy vs. MACs (benchmark, Pareto front)" in text
    assert "unstructured sparsity gives no speed-up on dense kernels" in text
    assert not re.search(r"20\d\d-\d\d-\d\d", text)

    (results / "plots" / f"{STUDY}_training_curves.png").unlink()
    assert main(argv) == 0
    assert "training_curves" not in report.read_text()
    capsys.readouterr()


def test_report_links_are_relative_to_the_report(runs, summary, tmp_path):
    write_tables(runs, summary, tmp_path / "tables")
    write_plots(runs, summary, tmp_path / "plots")
    report = write_report(tmp_path / "tables", tmp_path / "plots", tmp_path / "docs" / "report.md")
    links = _links(report.read_text())
    assert f"../plots/{STUDY}_accuracy_vs_sparsity.png" in links
    assert f"../plots/{STUDY}_accuracy_vs_params.png" in links
    assert all((report.parent / x).is_file() for x in links)


def test_report_shows_the_lottery_figure_only_for_a_study_with_lottery_runs(runs, tmp_path):
    """A study without lottery runs has no lottery figure, and its report no such section."""
    figure = f"../plots/{STUDY}_lottery_tickets.png"
    for with_lottery in (False, True):
        made = runs.copy()
        if with_lottery:  # random's runs, made lottery tickets
            rnd = made["label"] == "rnd"
            made.loc[rnd, "method"] = "lottery"
            made.loc[rnd, ["recovery", "control"]] = [None, "ticket"]
        out = tmp_path / str(with_lottery)
        summary = summarise(made)
        write_tables(made, summary, out / "tables")
        write_plots(made, summary, out / "plots")
        assert (out / "plots" / f"{STUDY}_lottery_tickets.png").is_file() is with_lottery
        text = write_report(out / "tables", out / "plots", out / "docs" / "report.md").read_text()
        assert (figure in _links(text)) is with_lottery
        assert ("Lottery tickets against random reinitialisation" in text) is with_lottery


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


def test_report_says_which_thread_counts_made_the_runs(runs, summary, tmp_path):
    """Results depend on the torch thread count, so the report shows it per study."""
    runs = runs.copy()
    runs["threads"] = 1
    runs.loc[runs.index[:2], "threads"] = 2
    write_tables(runs, summary, tmp_path / "tables")
    text = write_report(tmp_path / "tables", tmp_path / "plots", tmp_path / "report.md").read_text()
    assert f"Torch threads per run: 1 ({len(runs) - 2} runs), 2 (2 runs)." in text


@pytest.mark.parametrize("study", ["digits_cnn", "mnist_lth"])
def test_committed_tables_of_an_older_version_read_in_the_current_shape(study):
    """The committed tables were written before `control` and `series` existed; reading them
    gives the current columns, and the study's markdown comes out as committed."""
    from prunebench.analysis.aggregate import read_tables, summary_markdown

    tables = Path(__file__).resolve().parents[1] / "results" / "studies" / study
    old_summary = pd.read_csv(tables / "summary.csv")
    if "control" in old_summary:
        pytest.skip("the committed tables are already in the current shape")
    runs, summary = read_tables(tables)
    for frame, old in ((runs, pd.read_csv(tables / "runs.csv")), (summary, old_summary)):
        assert frame["series"].tolist() == old["label"].tolist()  # the old label was the name
        assert not frame["label"].str.endswith(("+distill", "_reinit")).any()
        reinit = frame["control"] == "reinit"
        assert (frame.loc[reinit, "method"] == "lottery").all()
        assert (frame.loc[old["method"] == "lottery", "control"] == "ticket").all()
    assert summary_markdown(summary) == (tables / "summary.md").read_text()
