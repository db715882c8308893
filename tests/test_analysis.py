"""Aggregation, plots and report, on run directories written by hand with known numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest

from prunebench.analysis.aggregate import (
    LEADING_COLUMNS,
    SORT_KEYS,
    collect_runs,
    hardware_table,
    headline_metrics,
    modes_table,
    read_tables,
    recovery_pairs,
    summarise,
    summary_markdown,
    write_tables,
)
from prunebench.analysis.plots import (
    EFFECTIVE_LEGEND,
    NO_BENCHMARK,
    PLOT_NAMES,
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
from prunebench.analysis.report import write_report
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
    recovery: str | None
    structured: bool  # its targets are channel sparsities


METHODS = {
    DENSE: Method("train", "dense", None, False),
    "mag": Method("recover", "global_magnitude", "finetune", False),
    "mag+distill": Method("recover", "global_magnitude", "distill", False),
    "rnd": Method("recover", "random", "finetune", False),
    "l1f": Method("recover", "l1_filter", "finetune", True),
    "l1f+distill": Method("recover", "l1_filter", "distill", True),
}
# top-1 per (label, target) and seed; the target is a channel sparsity for structured labels
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


def _reductions(label: str, target: float) -> tuple[int, int, float]:
    """(params_total, params_nonzero, macs_reduction) of a run: masks zero weights but keep
    the architecture and its MACs; removing a fraction c of the channels leaves (1 - c)^2 of
    the weights and a little more of the MACs."""
    if not METHODS[label].structured:
        return PARAMS_TOTAL, round(PARAMS_TOTAL * (1 - target)), 0.0
    left = round(PARAMS_TOTAL * (1 - target) ** 2)
    return left, left, 1 - (1 - target) ** 2 - 0.05


def _write_run(root: Path, label: str, target: float, seed: int, study: str = STUDY,
               **extra_metrics) -> dict:
    spec = METHODS[label]
    run_hash = f"{label.replace('+', '_')}{int(target * 100):03d}s{seed}"
    path = root / spec.kind / run_hash
    path.mkdir(parents=True)
    top1 = TOP1[(label, target)][seed]
    meta = {"study": study, "dataset": "digits", "model": "mlp", "method": spec.method,
            "label": label, "target_sparsity": None if spec.structured else target,
            "channel_sparsity": target if spec.structured else None,
            "recovery": spec.recovery, "seed": seed, "result": True}
    total, nonzero, macs_reduction = _reductions(label, target)
    metrics = {"top1": top1, "top5": min(1.0, top1 + 0.05), "loss": 1 - top1,
               "val_top1": top1 - 0.01, "val_top5": 1.0, "val_loss": 1.01 - top1,
               "weight_sparsity": 0.0 if spec.structured else target + 0.001 * seed,
               "params_total": total, "params_nonzero": nonzero,
               "param_reduction": 1 - nonzero / PARAMS_TOTAL,
               "macs": round(MACS_TOTAL * (1 - macs_reduction)), "macs_reduction": macs_reduction,
               "threads": 2, "train_time_s": 1.0 + seed, **extra_metrics}
    if spec.structured:
        metrics["channels"] = {"fc1": {"kept": 8, "total": 16}}  # nested: not a column
    (path / "config.json").write_text(json.dumps(
        {"kind": spec.kind, "hash": run_hash, **meta, "data": {}, "config": {}}))
    (path / "metrics.json").write_text(json.dumps(metrics))
    epochs = np.arange(1, HISTORY_EPOCHS + 1)
    pd.DataFrame({"epoch": epochs, "iteration": 10 * epochs, "lr": 0.1, "train_loss": 1.0,
                  "train_top1": 0.5, "val_loss": 1.0, "val_top1": top1 * epochs / HISTORY_EPOCHS,
                  "val_top5": 1.0, "epoch_time_s": 0.1}).to_csv(path / "history.csv", index=False)
    return {"kind": spec.kind, "path": str(path), **meta, "top1": top1}


def _write_intermediate(root: Path, kind: str, label: str, seed: int) -> dict:
    """A finished run that only feeds others (slimming's pretraining, a one-shot prune)."""
    path = root / kind / f"{label}s{seed}"
    path.mkdir(parents=True)
    meta = {"study": STUDY, "dataset": "digits", "model": "mlp", "method": "slimming",
            "label": label, "target_sparsity": 0.0 if kind == "train" else None,
            "channel_sparsity": None if kind == "train" else 0.5, "recovery": None,
            "seed": seed, "result": False}
    (path / "config.json").write_text(json.dumps({"kind": kind, "hash": path.name, **meta}))
    (path / "metrics.json").write_text(json.dumps({"top1": 0.5, "params_total": PARAMS_TOTAL,
                                                   "params_nonzero": PARAMS_TOTAL}))
    return {"kind": kind, "path": str(path), **meta}


def _write_benchmark(root: Path, run: dict, target: float, seed: int) -> dict:
    """The benchmark run of a result run, as the benchmark stage writes it, and its manifest
    entry (with `of`, the measured run's path)."""
    spec = BENCHMARKED[(run["label"], target)]
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


def _targets(label: str) -> list[float]:
    return [t for (name, t) in TOP1 if name == label]


@pytest.fixture
def manifests(tmp_path: Path) -> list[Path]:
    """A train manifest (dense and slimming's pretraining, which must be ignored), one
    manifest per recovered method (each listing its prune parents, which must be ignored), a
    benchmark manifest (dense, mag @ 0.9 and l1f @ 0.5), a prune manifest, and the train
    manifest again."""
    root, jobs = tmp_path / "runs", tmp_path / "jobs"
    jobs.mkdir()
    train = [_write_run(root, "dense", 0.0, s) for s in SEEDS]
    benchmarks = [_write_benchmark(root, run, 0.0, s) for s, run in zip(SEEDS, train)]
    train += [_write_intermediate(root, "train", "slim_pretrain", s) for s in SEEDS]
    files = [jobs / "train.json"]
    files[0].write_text(json.dumps({"command": "train", "study": STUDY, "runs": train}))
    for label, spec in METHODS.items():
        if label == DENSE:
            continue
        runs = []
        for seed in SEEDS:
            for target in _targets(label):
                run = _write_run(root, label, target, seed)
                if (label, target) in BENCHMARKED:
                    benchmarks.append(_write_benchmark(root, run, target, seed))
                runs.append(run)
        runs.append({"kind": "prune", "path": str(root / "prune" / "x")})  # intermediate
        files.append(jobs / f"{label}.json")
        files[-1].write_text(json.dumps({"command": spec.recovery, "study": STUDY,
                                         "runs": runs}))
    files.append(jobs / "benchmark.json")
    files[-1].write_text(json.dumps({"command": "benchmark", "study": STUDY,
                                     "runs": benchmarks}))
    prune = jobs / "prune.json"
    prune.write_text(json.dumps({"command": "prune", "runs": [
        _write_intermediate(root, "prune", "slimming", s) for s in SEEDS]}))
    return [*files, prune, files[0]]  # train listed twice: runs are de-duplicated


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


def _at(table: pd.DataFrame, label: str, target: float) -> pd.DataFrame:
    """The rows of `label` at `target`, matched on the column its kind of target lives in."""
    column = "channel_sparsity" if METHODS[label].structured else "target_sparsity"
    return table[(table["label"] == label) & (table[column] == target)]


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
    assert _at(runs, "mag+distill", 0.9)["recovery"].tolist() == ["distill", "distill"]
    assert runs.loc[runs["label"] == DENSE, "recovery"].isna().all()


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
    extra = runs.columns[len(LEADING_COLUMNS):-2].tolist()
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
    l1f = summary[summary["label"] == "l1f"]
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
    assert list(zip(pairs["base"], pairs["target"])) == [("l1f", "c0.50"), ("mag", "s0.90")]
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
    labels = summary["label"]
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
    assert len(ax.get_lines()) == 4  # mag, mag+distill, rnd and the dense reference
    assert [t.get_text() for t in ax.get_legend().get_texts()] == \
        ["dense (n=2)", "mag", "mag+distill", "rnd"]
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
    assert set(lines) == {"dense (n=2)", *(m for m in METHODS if m != DENSE)}
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

    mag = summary[summary["label"] == "mag"]
    many = pd.concat([summary] + [mag.assign(label=f"method_{i:02d}", method=f"method_{i:02d}")
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


def test_pareto_figures_without_benchmarks_say_so(manifests, tmp_path):
    import matplotlib.image

    runs = collect_runs(_without_benchmarks(manifests))
    summary = summarise(runs)
    for fig in (pareto_macs_figure(summary, STUDY), pareto_latency_figure(summary, STUDY)):
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.texts] == [NO_BENCHMARK] and not ax.get_lines()
    paths = write_plots(runs, summary, tmp_path)
    assert [p.name for p in paths] == [f"{STUDY}_{n}.png" for n in PLOT_NAMES]
    for name in ("pareto_macs", "pareto_latency"):
        image = matplotlib.image.imread(tmp_path / f"{STUDY}_{name}.png")
        assert image[..., :3].std() > 0.01  # the frame and its note, not a blank file


def test_curves_figure_averages_seeds(runs):
    lines = _lines(curves_figure(runs, STUDY))
    assert lines["mag @ 0.9"].get_ydata()[-1] == pytest.approx(83.0)  # seed mean, last epoch


@pytest.mark.parametrize("keep", ["all", "structured only", "unstructured only"])
def test_write_plots_gives_nonblank_pngs(runs, tmp_path, keep):
    import matplotlib.image

    structured = runs["label"].isin(STRUCTURED)
    runs = {"all": runs, "structured only": runs[structured],
            "unstructured only": runs[runs["channel_sparsity"].isna()]}[keep]
    paths = write_plots(runs, summarise(runs), tmp_path)
    assert [p.name for p in paths] == [f"{STUDY}_{n}.png" for n in PLOT_NAMES]
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
        assert image[..., :3].std() > 0.01
    assert not list(tmp_path.glob(".*.tmp"))


def test_plot_names_match_the_workflow():
    smk = (Path(__file__).parents[1] / "workflow" / "rules" / "common.smk").read_text()
    block = re.search(r"^PLOTS = \((.*?)\)", smk, re.DOTALL | re.MULTILINE).group(1)
    assert tuple(re.findall(r'"(\w+)"', block)) == PLOT_NAMES


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
    assert sorted(images) == sorted(f"plots/{STUDY}_{name}.png" for name in PLOT_NAMES
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
    """Every study gets every figure file (the workflow's outputs are fixed), but the lottery
    figure of a study without lottery runs only says so, and the report leaves it out."""
    figure = f"../plots/{STUDY}_lottery_tickets.png"
    for with_lottery in (False, True):
        made = runs.copy()
        if with_lottery:  # random's runs, relabelled as lottery tickets
            made.loc[made["label"] == "rnd", "method"] = "lottery"
        out = tmp_path / str(with_lottery)
        summary = summarise(made)
        write_tables(made, summary, out / "tables")
        write_plots(made, summary, out / "plots")
        assert (out / "plots" / f"{STUDY}_lottery_tickets.png").is_file()
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
