"""Collect finished runs into one table, summarise it over seeds, and write the tables.

The job manifests written by the training commands say *which* run directories belong to the
results; the run directories themselves (`config.json`, `metrics.json`, `benchmark.json`) are
the source of truth for every number. Any extra numeric key a later stage adds to
`metrics.json` or `benchmark.json` becomes a column without code changes here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from prunebench.errors import ConfigError
from prunebench.io import atomic_write_json, atomic_write_text

RESULT_KINDS = ("train", "finetune", "lottery", "lottery_reinit")
DENSE_LABEL = "dense"

ID_COLUMNS = ["study", "dataset", "model", "method", "label", "target_sparsity"]
LEADING_COLUMNS = [
    *ID_COLUMNS, "weight_sparsity", "seed", "top1", "top5", "loss", "val_top1", "val_top5",
    "val_loss", "params_total", "params_nonzero", "params_remaining_frac",
]
TRAILING_COLUMNS = ["run_dir", "hash"]
GROUP_KEYS = ["study", "dataset", "model", "label", "method", "target_sparsity"]
SORT_KEYS = ["study", "label", "target_sparsity", "seed"]
NOT_SUMMARISED = {"seed", "target_sparsity"}
BENCHMARK_PREFIX = "benchmark_"  # for a benchmark.json key that metrics.json already has


# ---------------------------------------------------------------- reading runs


def read_manifest(path: Path) -> dict:
    """A job manifest, checked for the shape the aggregation needs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"manifest {str(path)!r} does not exist")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"manifest {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
        raise ConfigError(f"manifest {str(path)!r} has no 'runs' list")
    if not manifest["runs"]:
        raise ConfigError(f"manifest {str(path)!r} lists no runs")
    return manifest


def read_manifest_list(path: Path) -> list[Path]:
    """Manifest paths from a file with one path per line (blank lines and # comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"manifest list {str(path)!r} does not exist")
    lines = (line.strip() for line in path.read_text().splitlines())
    return [Path(line) for line in lines if line and not line.startswith("#")]


def _run_dir(entry: Mapping[str, Any], manifest: Path) -> Path:
    """A run's directory: as written (relative to the working directory), else relative to
    the manifest's own directory."""
    if "path" not in entry:
        raise ConfigError(f"manifest {str(manifest)!r} has a run without 'path'")
    as_written = Path(entry["path"])
    for candidate in (as_written, manifest.parent / as_written):
        if (candidate / "metrics.json").is_file() and (candidate / "config.json").is_file():
            return candidate
    raise ConfigError(
        f"run {str(as_written)!r} listed in manifest {str(manifest)!r} is not a finished run "
        "directory (needs config.json and metrics.json)"
    )


def _read_json_object(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{str(path)!r} must hold a JSON object")
    return obj


def _scalars(d: Mapping[str, Any]) -> dict:
    """The flat scalar entries of a metrics dict (nested values have no place in a table)."""
    return {k: v for k, v in d.items() if v is None or isinstance(v, (bool, int, float, str))}


def read_run(run_dir: Path) -> dict:
    """One table row from a finished run directory."""
    config = _read_json_object(run_dir / "config.json")
    metrics = _scalars(_read_json_object(run_dir / "metrics.json"))
    bench_file = run_dir / "benchmark.json"
    if bench_file.is_file():
        for key, value in _scalars(_read_json_object(bench_file)).items():
            metrics[BENCHMARK_PREFIX + key if key in metrics else key] = value
    row = {key: config.get(key) for key in ID_COLUMNS}
    row["seed"] = config.get("seed")
    row.update({k: v for k, v in metrics.items() if k not in row and k not in TRAILING_COLUMNS})
    total, nonzero = metrics.get("params_total"), metrics.get("params_nonzero")
    row["params_remaining_frac"] = nonzero / total if total and nonzero is not None else math.nan
    row["run_dir"] = str(run_dir)
    row["hash"] = config.get("hash", run_dir.name)
    row["kind"] = config.get("kind")
    return row


def collect_runs(manifests: Iterable[Path]) -> pd.DataFrame:
    """One row per result run listed in the manifests (train, finetune, lottery and its
    reinit control; one-shot prune runs are intermediate), de-duplicated by run directory."""
    manifests = [Path(m) for m in manifests]
    rows, seen = [], set()
    for manifest_path in manifests:
        manifest = read_manifest(manifest_path)
        if manifest.get("command") == "prune":
            continue
        for entry in manifest["runs"]:
            if entry.get("kind") not in RESULT_KINDS:
                continue
            run_dir = _run_dir(entry, manifest_path)
            key = os.path.realpath(run_dir)
            if key in seen:
                continue
            seen.add(key)
            row = read_run(run_dir)
            if row.pop("kind") not in RESULT_KINDS:
                continue
            rows.append(row)
    if not rows:
        names = ", ".join(repr(str(m)) for m in manifests) or "(none given)"
        raise ConfigError(f"no train/finetune/lottery runs in manifests {names}")
    df = pd.DataFrame(rows)
    for col in LEADING_COLUMNS + TRAILING_COLUMNS:
        if col not in df:
            df[col] = math.nan
    extra = sorted(c for c in df.columns if c not in LEADING_COLUMNS + TRAILING_COLUMNS)
    df = df[LEADING_COLUMNS + extra + TRAILING_COLUMNS]
    return df.sort_values(SORT_KEYS, kind="mergesort", na_position="last").reset_index(drop=True)


# ---------------------------------------------------------------- summary over seeds


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The numeric metric columns of a runs table, in table order."""
    return [c for c in df.columns
            if c not in NOT_SUMMARISED and c not in GROUP_KEYS
            and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Per (study, dataset, model, label, target_sparsity): the number of runs `n`, and the
    mean and sample standard deviation (ddof=1, NaN for a single run) of every numeric metric,
    plus `delta_top1_vs_dense`: mean top-1 minus the study's dense mean top-1."""
    if df.empty:
        raise ConfigError("the runs table is empty: nothing to summarise")
    metrics = metric_columns(df)
    grouped = df.groupby(GROUP_KEYS, dropna=False, sort=True)
    summary = grouped.size().rename("n").to_frame()
    stats = grouped[metrics].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    summary = summary.join(stats).reset_index()
    dense = summary[summary["label"] == DENSE_LABEL].groupby("study")["top1_mean"].mean()
    delta = summary["top1_mean"] - summary["study"].map(dense)
    summary.insert(summary.columns.get_loc("n") + 1, "delta_top1_vs_dense", delta)
    return summary


def sparsity_key(sparsity: float) -> str:
    """A stable text key for a sparsity: 0.8 -> "s0.80", 0.995 -> "s0.995"."""
    for decimals in range(2, 10):
        text = f"{sparsity:.{decimals}f}"
        if abs(float(text) - sparsity) < 1e-12:
            return f"s{text}"
    return f"s{sparsity!r}"


def _json_number(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def headline_metrics(summary: pd.DataFrame) -> dict:
    """{study: {label: {"s0.80": {"top1_mean", "top1_std"}}}} for DVC metrics; a std over a
    single seed is null."""
    out: dict = {}
    for row in summary.itertuples(index=False):
        cell = out.setdefault(row.study, {}).setdefault(row.label, {})
        cell[sparsity_key(row.target_sparsity)] = {
            "top1_mean": _json_number(row.top1_mean), "top1_std": _json_number(row.top1_std),
        }
    return out


# ---------------------------------------------------------------- markdown tables


def ordered_labels(labels: Iterable[str]) -> list[str]:
    """Method labels with the dense baseline first, the rest alphabetically."""
    labels = sorted(set(labels))
    return [DENSE_LABEL] * (DENSE_LABEL in labels) + [x for x in labels if x != DENSE_LABEL]


def _pm(mean: float, std: float, scale: float = 100.0) -> str:
    if pd.isna(mean):
        return "–"
    spread = "–" if pd.isna(std) else f"{std * scale:.2f}"
    return f"{mean * scale:.2f} ± {spread}"


def _signed(x: float) -> str:
    return "–" if pd.isna(x) else f"{x * 100:+.2f}"


def study_table(summary: pd.DataFrame, study: str) -> str:
    """The markdown results table of one study: dense first, then each method by sparsity."""
    rows = summary[summary["study"] == study]
    order = {label: i for i, label in enumerate(ordered_labels(rows["label"]))}
    rows = rows.assign(_order=rows["label"].map(order)).sort_values(
        ["_order", "target_sparsity"], kind="mergesort")
    table = pd.DataFrame({
        "Method": rows["label"],
        "Target sparsity": rows["target_sparsity"].map(lambda s: f"{s:.2f}"),
        "Achieved sparsity": rows["weight_sparsity_mean"].map(
            lambda s: "–" if pd.isna(s) else f"{s:.4f}"),
        "Top-1 (%)": [_pm(m, s) for m, s in zip(rows["top1_mean"], rows["top1_std"])],
        "Top-5 (%)": [_pm(m, s) for m, s in zip(rows["top5_mean"], rows["top5_std"])],
        "Δ top-1 vs dense (pp)": rows["delta_top1_vs_dense"].map(_signed),
        "n": rows["n"].astype(int),
    })
    return table.to_markdown(index=False, disable_numparse=True,
                             colalign=("left",) + ("right",) * 6) + "\n"


def studies(summary: pd.DataFrame) -> list[str]:
    return sorted(summary["study"].dropna().unique())


def summary_markdown(summary: pd.DataFrame) -> str:
    parts = ["# Results summary\n",
             "Top-1/top-5 test accuracy as mean ± sample std over seeds (– where n = 1); "
             "Δ is the mean top-1 difference to the study's dense model in percentage points.\n"]
    for study in studies(summary):
        parts.append(f"## {study}\n")
        parts.append(study_table(summary, study))
    return "\n".join(parts)


# ---------------------------------------------------------------- writing


def _csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, lineterminator="\n")


def write_tables(df: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write runs.csv, summary.csv and summary.md into `out_dir`, each atomically."""
    out_dir = Path(out_dir)
    return [
        atomic_write_text(out_dir / "runs.csv", _csv(df)),
        atomic_write_text(out_dir / "summary.csv", _csv(summary)),
        atomic_write_text(out_dir / "summary.md", summary_markdown(summary)),
    ]


def write_headline(summary: pd.DataFrame, path: Path) -> Path:
    return atomic_write_json(path, headline_metrics(summary))


def read_tables(tables_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """runs.csv and summary.csv from a tables directory written by `write_tables`."""
    tables_dir = Path(tables_dir)
    frames = []
    for name in ("runs.csv", "summary.csv"):
        path = tables_dir / name
        if not path.is_file():
            raise ConfigError(f"{str(path)!r} does not exist (run `prunebench aggregate` first)")
        try:
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            raise ConfigError(f"{str(path)!r} is empty") from None
        if frame.empty:
            raise ConfigError(f"{str(path)!r} has no rows")
        frames.append(frame)
    return frames[0], frames[1]
