"""Collect finished runs into one table, summarise it over seeds, and write the tables.

The job manifests written by the training commands say *which* run directories belong to the
results; the benchmark manifests say which benchmark run measured which of them. The run
directories themselves (`config.json`, `metrics.json`, and the benchmark run's flat
`metrics.json`) are the source of truth for every number. Any extra numeric key a later stage
adds to either `metrics.json` becomes a column without code changes here.

What a run was is in columns: `label` (the study's method label), `recovery` ("finetune",
"distill", "rewind" or null) and `control` ("ticket", "reinit" or null: lottery levels and
rewind runs are tickets, each with its random-reinitialisation control); `series` is the
name tables, figures and headline files show, composed from those three by
`prunebench.labels.series_name`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from prunebench.analysis.names import (
    DENSE_LABEL,
    DISTILL,
    REINIT,
    REWIND,
    TICKET,
    check_kind,
    normalise_legacy_record,
    series_name,
)
from prunebench.budgets import KINDS as BUDGET_KINDS
from prunebench.budgets import Budget
from prunebench.errors import ConfigError
from prunebench.io import atomic_write_json, atomic_write_text
from prunebench.provenance import COLUMNS as PROVENANCE_COLUMNS
from prunebench.provenance import columns as provenance_columns
from prunebench.runs import damaged_file

RESULT_KINDS = ("train", "recover", "lottery", "lottery_reinit")

# A structured method's target is `channel_sparsity` (fraction of channels removed) and its
# `target_sparsity` is null; an unstructured one's is the other way round. All but `series`
# are the run's config keys; `series` is composed from `label`, `recovery` and `control`.
META_COLUMNS = ["study", "dataset", "model", "method", "label", "target_sparsity",
                "channel_sparsity", "recovery", "control", "budget_kind", "budget_value",
                "budget_batch_size"]
ID_COLUMNS = [*META_COLUMNS, "series"]
LEADING_COLUMNS = [
    *ID_COLUMNS, "weight_sparsity", "param_sparsity", "mask_sparsity", "seed", "top1", "top5",
    "loss", "val_top1", "val_top5",
    "val_loss", "params_total", "params_nonzero", "params_remaining_frac", "param_reduction",
    "macs", "macs_reduction", "compression_ratio", "theoretical_speedup", "threads",
]
# What made each run (`prunebench.provenance`): empty for runs made before it was recorded.
TRAILING_COLUMNS = [*PROVENANCE_COLUMNS, "weights_sha256", "run_dir", "hash"]
# `series` is a function of `label`, `recovery` and `control`: it splits no group, and leads
# so that groups sort by the name they are shown under.
GROUP_KEYS = ["study", "dataset", "model", "series", "label", "method", "target_sparsity",
              "channel_sparsity", "recovery", "control", "budget_kind", "budget_value",
              "budget_batch_size"]
SORT_KEYS = ["study", "series", "target_sparsity", "channel_sparsity", "seed"]
NOT_SUMMARISED = {"seed", *PROVENANCE_COLUMNS, "weights_sha256"}
BENCHMARK_PREFIX = "benchmark_"  # for a benchmark key that the run's metrics already have
# The benchmark's text columns: how its numbers were measured, kept in the summary (as the
# group's distinct values) so the tables can say it without the runs table.
BENCHMARK_TEXT = ("device", "memory_method", "energy_method", "energy_unavailable_reason",
                  # and one of the runs': the SHA-256 of the pretrained checkpoint a dense
                  # model was loaded from (`model.checkpoint`), so its summary row says so.
                  "pretrained")


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
        "directory (needs config.json and metrics.json); `prunebench status` lists such runs "
        "and `prunebench rerun` remakes them"
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


def is_result(record: Mapping[str, Any]) -> bool:
    """Whether a manifest entry or run config is a result: a result kind, and not marked
    `"result": false` (slimming's pretraining is a `train` run that only feeds pruning)."""
    return record.get("kind") in RESULT_KINDS and record.get("result") is not False


def read_run(run_dir: Path, benchmark: Mapping[str, Any] | None = None) -> dict | None:
    """One table row from a finished run directory, or None if the run is not a result;
    `benchmark` is the headline of its benchmark run (keys it shares with the run's own
    metrics get the `benchmark_` prefix)."""
    config = normalise_legacy_record(_read_json_object(run_dir / "config.json"))
    if not is_result(config):
        return None
    check_run_files(run_dir)
    raw_metrics = _read_json_object(run_dir / "metrics.json")
    metrics = _scalars(raw_metrics)
    for key, value in _scalars(benchmark or {}).items():
        metrics[BENCHMARK_PREFIX + key if key in metrics else key] = value
    row = {key: config.get(key) for key in META_COLUMNS}
    try:
        check_kind(row["label"], row["recovery"], row["control"])
    except ConfigError as err:
        raise ConfigError(f"{str(run_dir / 'config.json')!r}: {err}") from None
    row["series"] = series_name(row["label"], row["recovery"], row["control"])
    row["seed"] = config.get("seed")
    if isinstance(metrics.get("budget_met"), bool):  # averaged over seeds: the share met
        metrics["budget_met"] = float(metrics["budget_met"])
    row.update({k: v for k, v in metrics.items() if k not in row and k not in TRAILING_COLUMNS})
    total, nonzero = metrics.get("params_total"), metrics.get("params_nonzero")
    row["params_remaining_frac"] = nonzero / total if total and nonzero is not None else math.nan
    row.update(provenance_columns(raw_metrics.get("provenance")))
    row["weights_sha256"] = _model_digest(run_dir)
    row["run_dir"] = str(run_dir)
    row["hash"] = config.get("hash", run_dir.name)
    return row


def _model_digest(run_dir: Path) -> str | None:
    """The SHA-256 of the run's model.pt as its checksums.json records it (None for a run
    made before checksums): two rows with equal digests have bit-identical weights."""
    sums = run_dir / "checksums.json"
    if not sums.is_file():
        return None
    digest = _read_json_object(sums).get("model.pt")
    return digest if isinstance(digest, str) else None


def check_run_files(run_dir: Path) -> None:
    """Refuse a run whose files no longer match the checksums recorded when it finished (an
    edited `metrics.json`, a damaged model, a deleted file): its numbers would enter the
    tables unchecked."""
    damaged = damaged_file(run_dir)
    if damaged is not None:
        raise ConfigError(
            f"run {str(run_dir)!r}: {damaged} does not match the checksum recorded when the run "
            "finished (edited or damaged since); `prunebench status` lists such runs and "
            "`prunebench rerun` redoes them")


def _benchmarks(manifests: Iterable[Path]) -> dict[tuple[str | None, str], dict]:
    """Benchmark headlines by (study, real path of the run they measured): two studies may
    measure one run differently (their own benchmark settings)."""
    out = {}
    for manifest_path in manifests:
        manifest = read_manifest(manifest_path)
        if manifest.get("command") != "benchmark":
            continue
        for entry in manifest["runs"]:
            bench_dir = _run_dir(entry, manifest_path)
            measured = _run_dir({"path": entry["of"]}, manifest_path)
            check_run_files(bench_dir)
            key = (manifest.get("study"), os.path.realpath(measured))
            out[key] = _read_json_object(bench_dir / "metrics.json")
    return out


def collect_runs(manifests: Iterable[Path]) -> pd.DataFrame:
    """One row per result run listed in the manifests (dense and gradual training, recovered
    one-shot runs, lottery and its reinit control; pruning and pretraining runs are
    intermediate), de-duplicated by run directory."""
    manifests = [Path(m) for m in manifests]
    benchmarks = _benchmarks(manifests)
    rows, seen = [], set()
    for manifest_path in manifests:
        manifest = read_manifest(manifest_path)
        if manifest.get("command") in ("prune", "benchmark"):
            continue
        for entry in manifest["runs"]:
            if not is_result(entry):
                continue
            run_dir = _run_dir(entry, manifest_path)
            path = os.path.realpath(run_dir)
            # A run two studies ask for (the same description: a shared dense model) is
            # made once, and its config names the study that made it first: it is a row of
            # every study whose job lists it.
            study = manifest.get("study")
            if (study, path) in seen:
                continue
            seen.add((study, path))
            row = read_run(run_dir, benchmarks.get((study, path)))
            if row is not None:
                if study is not None:
                    row["study"] = study
                rows.append(row)
    if not rows:
        names = ", ".join(repr(str(m)) for m in manifests) or "(none given)"
        raise ConfigError(f"no result runs (train/recover/lottery) in manifests {names}")
    df = add_ratios(pd.DataFrame(rows))
    _check_series(df)
    for col in LEADING_COLUMNS + TRAILING_COLUMNS:
        if col not in df:
            df[col] = math.nan
    extra = sorted(c for c in df.columns if c not in LEADING_COLUMNS + TRAILING_COLUMNS)
    df = df[LEADING_COLUMNS + extra + TRAILING_COLUMNS]
    return df.sort_values(SORT_KEYS, kind="mergesort", na_position="last").reset_index(drop=True)


def add_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the two ratios Blalock et al. (2020) ask every result to report, computed
    per run from columns the runs already have (`prunebench.analysis.checklist`):

    - `compression_ratio`: the unpruned model's parameters over this model's nonzero ones,
      1 / (1 - `param_reduction`) (2.0 is half the parameters left; 1.0 for the dense model);
    - `theoretical_speedup`: the unpruned model's MACs over the MACs this model would execute
      if zero weights were skipped (its effective MACs): 1 / ((1 - `macs_reduction`) ×
      `macs_effective` / `macs_dense`). Each factor is a ratio within one MAC counter (the
      run's own against the unpruned architecture, and the benchmark's effective against
      dense-kernel MACs of the same model), so the two counters never mix; NaN for a run no
      benchmark measured (no `macs_effective`).

    A column that cannot be computed (its inputs missing, as in tables written before it
    existed) is NaN. Returns a copy; existing values are recomputed from their inputs."""
    out = df.copy()
    nan = pd.Series(math.nan, index=out.index, dtype=float)

    def number(column: str) -> pd.Series:
        return pd.to_numeric(out[column], errors="coerce") if column in out else nan

    with_zeros = number("macs_effective") / number("macs_dense")
    out["compression_ratio"] = 1.0 / (1.0 - number("param_reduction"))
    out["theoretical_speedup"] = 1.0 / ((1.0 - number("macs_reduction")) * with_zeros)
    return out


def _check_series(df: pd.DataFrame) -> None:
    """Refuse two kinds of run shown under one name in a study (a label "x_reinit" beside the
    control of a label "x"): their rows would be drawn as one line."""
    kinds = df[["study", "series", "label", "recovery", "control"]].astype(object)
    kinds = kinds.where(kinds.notna(), None).drop_duplicates()
    clash = kinds[kinds.duplicated(["study", "series"], keep=False)]
    if len(clash):
        first = clash.iloc[0]
        both = clash[(clash["study"] == first["study"]) & (clash["series"] == first["series"])]
        what = "; ".join(f"label {r.label!r} recovery {r.recovery!r} control {r.control!r}"
                         for r in both.itertuples(index=False))
        raise ConfigError(f"study {first['study']!r} shows two kinds of run as "
                          f"{first['series']!r} ({what}): rename one of the labels")


# ---------------------------------------------------------------- summary over seeds


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The numeric metric columns of a runs table, in table order."""
    return [c for c in df.columns
            if c not in NOT_SUMMARISED and c not in GROUP_KEYS
            and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]


def _distinct(values: pd.Series) -> str | float:
    """A group's distinct texts, sorted and joined by "; " (NaN if it has none)."""
    texts = sorted({str(v) for v in values.dropna()})
    return "; ".join(texts) if texts else math.nan


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Per (study, dataset, model, series, label, method, target, recovery, control): the
    number of runs `n`, and the mean and sample standard deviation (ddof=1, NaN for a single
    run) of every numeric metric, plus `delta_top1_vs_dense`: mean top-1 minus the study's
    dense mean top-1, and the benchmark's text columns (`BENCHMARK_TEXT`) the runs have. Null
    targets, recoveries and controls group as one value (dropna=False): each run has exactly
    one of `target_sparsity` and `channel_sparsity`."""
    if df.empty:
        raise ConfigError("the runs table is empty: nothing to summarise")
    metrics = metric_columns(df)
    grouped = df.groupby(GROUP_KEYS, dropna=False, sort=True)
    summary = grouped.size().rename("n").to_frame()
    stats = grouped[metrics].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    summary = summary.join(stats)
    texts = [c for c in BENCHMARK_TEXT if c in df]
    if texts:
        summary = summary.join(grouped[texts].agg(_distinct))
    summary = summary.reset_index()
    dense = summary[summary["series"] == DENSE_LABEL].groupby("study")["top1_mean"].mean()
    delta = summary["top1_mean"] - summary["study"].map(dense)
    summary.insert(summary.columns.get_loc("n") + 1, "delta_top1_vs_dense", delta)
    return summary


def _number_key(prefix: str, value: float) -> str:
    """`prefix` and the shortest rounding (at least 2 decimals) that gives `value` back."""
    for decimals in range(2, 10):
        text = f"{value:.{decimals}f}"
        if abs(float(text) - value) < 1e-12:
            return f"{prefix}{text}"
    return f"{prefix}{value!r}"


def sparsity_key(sparsity: float) -> str:
    """A stable text key for a weight sparsity: 0.8 -> "s0.80", 0.995 -> "s0.995"."""
    return _number_key("s", sparsity)


def channel_key(channel_sparsity: float) -> str:
    """A stable text key for a fraction of channels removed: 0.5 -> "c0.50". Its own prefix
    keeps it from being read as (or colliding with) a weight sparsity."""
    return _number_key("c", channel_sparsity)


def target_key(target_sparsity: float, channel_sparsity: float) -> str:
    """The key of a row's target: its weight sparsity, else (structured) its channel one."""
    if pd.isna(target_sparsity):
        return channel_key(channel_sparsity)
    return sparsity_key(target_sparsity)


def _json_number(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _params_removed(row) -> float:
    """The share of the dense model's parameters a grid point removed, zeroed or cut out
    (`param_reduction`); tables without that column: the zeroed share of its own total,
    which misses channels cut out."""
    removed = getattr(row, "param_reduction_mean", math.nan)
    return 1.0 - row.params_remaining_frac_mean if pd.isna(removed) else removed


def headline_metrics(summary: pd.DataFrame) -> dict:
    """{study: {series: {"s0.80" | "c0.50": {"top1_mean", "top1_std"}}}} for DVC metrics,
    by the series name ("mag", "mag+distill"): "s" keys are weight sparsities, "c" keys
    fractions of channels removed; a std over a single seed is null."""
    out: dict = {}
    for row in at_budget(summary, budget=False).itertuples(index=False):  # grid points only
        cell = out.setdefault(row.study, {}).setdefault(row.series, {})
        cell[target_key(row.target_sparsity, row.channel_sparsity)] = {
            "top1_mean": _json_number(row.top1_mean), "top1_std": _json_number(row.top1_std),
            "params_removed": _json_number(_params_removed(row)),
        }
    return out


WITHIN = 0.01  # "as accurate as dense": top-1 at most one point below the dense mean


def headline_rows(metrics: dict) -> dict:
    """{study: {series: row}}: the few numbers a person reads first. Per series, the
    largest fraction of the dense model's parameters removed (zeroed or cut out) while the
    mean top-1 stays within one point of dense, with that point's target and top-1; null
    where no target stays within one point."""
    rows: dict = {}
    for study, labels in metrics.items():
        dense = labels.get(DENSE_LABEL, {})
        dense_top1 = next(iter(dense.values()), {}).get("top1_mean")
        for label, cells in labels.items():
            if label == DENSE_LABEL:
                continue
            ok = [(cell["params_removed"] or 0.0, key, cell) for key, cell in cells.items()
                  if dense_top1 is not None and cell.get("top1_mean") is not None
                  and cell["top1_mean"] >= dense_top1 - WITHIN]
            best = max(ok, key=lambda x: x[0]) if ok else None
            rows.setdefault(study, {})[label] = {
                "dense_top1": dense_top1,
                "removed_within_1pt": best[0] if best else None,
                "at_target": best[1] if best else None,
                "top1_there": best[2]["top1_mean"] if best else None,
            }
    return rows


def write_headline_dir(paths: Iterable[Path], out: Path) -> list[Path]:
    """One small JSON file per study and series, `out/<series>.json` (DVC shows one row per
    file): the study's headline rows. Files of series no longer in the study go."""
    merged: dict = {}
    for path in paths:
        merged.update(_read_json_object(Path(path)))
    rows = headline_rows(merged)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for study, labels in rows.items():
        for label, row in labels.items():
            written.append(atomic_write_json(out / f"{label}.json", row))
    for stale in set(out.glob("*.json")) - set(written):
        stale.unlink()
    return written


# ---------------------------------------------------------------- markdown tables


def ordered_series(names: Iterable[str]) -> list[str]:
    """Series names with the dense baseline first, the rest alphabetically."""
    names = sorted(set(names))
    return [DENSE_LABEL] * (DENSE_LABEL in names) + [x for x in names if x != DENSE_LABEL]


def _pm(mean: float, std: float, scale: float = 100.0) -> str:
    if pd.isna(mean):
        return "–"
    spread = "–" if pd.isna(std) else f"{std * scale:.2f}"
    return f"{mean * scale:.2f} ± {spread}"


def _signed(x: float) -> str:
    return "–" if pd.isna(x) else f"{x * 100:+.2f}"


def _fraction(x: float) -> str:
    return "–" if pd.isna(x) else f"{x:.4f}"


def _markdown(table: pd.DataFrame) -> str:
    """A table with its first column left-aligned and the numbers right-aligned."""
    return table.to_markdown(index=False, disable_numparse=True,
                             colalign=("left",) + ("right",) * (table.shape[1] - 1)) + "\n"


def _in_order(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows dense first, then each series (alphabetically) by its target."""
    order = {name: i for i, name in enumerate(ordered_series(rows["series"]))}
    return rows.assign(_order=rows["series"].map(order)).sort_values(
        ["_order", "target_sparsity", "channel_sparsity"], kind="mergesort")


def _sorted_rows(summary: pd.DataFrame, study: str, structured: bool) -> pd.DataFrame:
    """One study's rows of one kind (structured: a channel target), in table order."""
    return _in_order(summary[(summary["study"] == study)
                             & (summary["channel_sparsity"].notna() == structured)])


def _accuracy_columns(rows: pd.DataFrame) -> dict[str, Any]:
    return {
        "Top-1 (%)": [_pm(m, s) for m, s in zip(rows["top1_mean"], rows["top1_std"])],
        "Top-5 (%)": [_pm(m, s) for m, s in zip(rows["top5_mean"], rows["top5_std"])],
        "Δ top-1 vs dense (pp)": rows["delta_top1_vs_dense"].map(_signed),
        "n": rows["n"].astype(int),
    }


def study_table(summary: pd.DataFrame, study: str) -> str:
    """The markdown table of one study's dense and unstructured (weight-sparsity) rows."""
    rows = _sorted_rows(summary, study, structured=False)
    return _markdown(pd.DataFrame({
        "Method": rows["series"],
        "Target sparsity": rows["target_sparsity"].map(lambda s: f"{s:.2f}"),
        "Achieved sparsity": rows["weight_sparsity_mean"].map(_fraction),
        "Zero params (all)": _column(rows, "param_sparsity_mean").map(_fraction),
        **_accuracy_columns(rows),
    }))


def structured_table(summary: pd.DataFrame, study: str) -> str | None:
    """The markdown table of one study's structured rows (None if it has none). The channel
    fraction a method was asked to remove sits next to the parameter and MAC reductions it
    achieved, under names that cannot be mistaken for one another: 50 % of the channels
    removes far more than 50 % of a conv net's weights."""
    rows = _sorted_rows(summary, study, structured=True)
    if rows.empty:
        return None
    return _markdown(pd.DataFrame({
        "Method": rows["series"],
        "Channels removed (target)": rows["channel_sparsity"].map(lambda s: f"{s:.2f}"),
        "Params removed (achieved)": rows["param_reduction_mean"].map(_fraction),
        "MACs removed (achieved)": rows["macs_reduction_mean"].map(_fraction),
        **_accuracy_columns(rows),
    }))


def recovery_pairs(summary: pd.DataFrame, study: str) -> pd.DataFrame:
    """One row per (label, target) of a study that was both fine-tuned and distilled (by the
    `recovery` column), with the fine-tuned columns suffixed `_ft` and the distilled ones
    `_kd`, and `top1_gain`: distilled minus fine-tuned mean top-1."""
    rows = summary[summary["study"] == study]
    rows = rows.assign(target=[target_key(t, c) for t, c in zip(rows["target_sparsity"],
                                                                rows["channel_sparsity"])])
    finetuned = rows[rows["recovery"] == "finetune"]
    distilled = rows[rows["recovery"] == DISTILL]
    # copy(): a merge of wide frames read back from CSV comes out in many blocks
    pairs = finetuned.merge(distilled, on=["label", "target"], suffixes=("_ft", "_kd")).copy()
    pairs["top1_gain"] = pairs["top1_mean_kd"] - pairs["top1_mean_ft"]
    return pairs.sort_values(["label", "target"], kind="mergesort").reset_index(drop=True)


def _target_text(key: str) -> str:
    """"s0.90" -> "weight sparsity 0.90", "c0.50" -> "channels removed 0.50"."""
    return ("weight sparsity " if key.startswith("s") else "channels removed ") + key[1:]


def recovery_table(summary: pd.DataFrame, study: str) -> str | None:
    """Fine-tuned against distilled top-1 per method and target (None unless some method of
    the study was recovered both ways)."""
    pairs = recovery_pairs(summary, study)
    if pairs.empty:
        return None
    return _markdown(pd.DataFrame({
        "Method": pairs["label"],
        "Target": pairs["target"].map(_target_text),
        "Top-1 fine-tuned (%)": [_pm(m, s) for m, s in zip(pairs["top1_mean_ft"],
                                                           pairs["top1_std_ft"])],
        "Top-1 distilled (%)": [_pm(m, s) for m, s in zip(pairs["top1_mean_kd"],
                                                          pairs["top1_std_kd"])],
        "Distilled − fine-tuned (pp)": pairs["top1_gain"].map(_signed),
    }))


def _iterations(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:,.0f} ± {'–' if pd.isna(std) else f'{std:,.0f}'}"


def _stat(row: pd.Series | None, metric: str, fmt: Callable[[float, float], str]) -> str:
    """`metric`'s mean ± std from a summary row, "–" without the row or the metric."""
    if row is None or f"{metric}_mean" not in row:
        return "–"
    return fmt(row[f"{metric}_mean"], row.get(f"{metric}_std", math.nan))


def _lottery_row(ticket: pd.Series, control: pd.Series | None, dense_top1: float) -> dict:
    """One row of the lottery table: a level's ticket beside its control (None: no control,
    as for the dense model's row)."""
    return {
        "Method": ticket["series"],
        "Weights remaining (%)": f"{100 * (1 - ticket['weight_sparsity_mean']):.1f}",
        "Ticket top-1 (%)": _stat(ticket, "top1", _pm),
        "Control top-1 (%)": _stat(control, "top1", _pm),
        "Ticket − dense (pp)": _signed(ticket["top1_mean"] - dense_top1),
        "Control − dense (pp)": ("–" if control is None
                                 else _signed(control["top1_mean"] - dense_top1)),
        "Ticket early stop (iter.)": _stat(ticket, "early_stop_iteration", _iterations),
        "Control early stop (iter.)": _stat(control, "early_stop_iteration", _iterations),
        "n": int(ticket["n"]),
    }


def has_lottery_runs(summary: pd.DataFrame, study: str) -> bool:
    """Whether `study` has lottery-ticket runs, a lottery chain's or a rewind recovery's (its
    report then has their table and figure)."""
    return bool(((summary["study"] == study) & (summary["control"] == TICKET)).any())


def lottery_table(summary: pd.DataFrame, study: str) -> str | None:
    """Frankle & Carbin's comparison as a table (None without lottery runs): the dense model,
    then per ticket series (a lottery label, or a method's `+rewind` recovery: a one-shot
    ticket) and level the ticket's and its random-reinitialisation control's test top-1 and
    early-stopping iteration (of minimum validation loss). A ticket and its control are the
    rows of one label, recovery and target with `control` "ticket" and "reinit"."""
    if not has_lottery_runs(summary, study):
        return None
    rows = summary[summary["study"] == study]
    tickets = rows[rows["control"] == TICKET]
    dense = rows[rows["series"] == DENSE_LABEL]
    dense_top1 = dense["top1_mean"].iloc[0] if len(dense) else math.nan
    table = [_lottery_row(dense.iloc[0], None, dense_top1)] if len(dense) else []
    for series in sorted(set(tickets["series"])):
        levels = tickets[tickets["series"] == series].sort_values("target_sparsity",
                                                                  kind="mergesort")
        controls = ticket_controls(rows, levels.iloc[0])
        for _, ticket in levels.iterrows():
            match = controls[controls["target_sparsity"] == ticket["target_sparsity"]]
            table.append(_lottery_row(ticket, match.iloc[0] if len(match) else None,
                                      dense_top1))
    note = LOTTERY_NOTE + (REWIND_NOTE if (tickets["recovery"] == REWIND).any() else "")
    return _markdown(pd.DataFrame(table)) + "\n" + note


def ticket_controls(rows: pd.DataFrame, ticket: pd.Series) -> pd.DataFrame:
    """The rows of `rows` that are controls of `ticket`'s series: its label and recovery
    (null for a lottery chain, "rewind" for a rewind run), `control` "reinit"."""
    recovery = ticket["recovery"]
    same = rows["recovery"].isna() if pd.isna(recovery) else rows["recovery"] == recovery
    return rows[(rows["label"] == ticket["label"]) & same & (rows["control"] == REINIT)]


LOTTERY_NOTE = (
    "Tickets are the iterative-magnitude-pruning masks with the survivors rewound; controls "
    "are the same masks from a fresh random initialisation. Top-1 is the test accuracy at "
    "the end of training; the early-stopping iteration is the training iteration of minimum "
    "validation loss, read once per epoch (mean ± std over seeds). The first row is the "
    "dense model.\n"
)
REWIND_NOTE = (  # after LOTTERY_NOTE where the table has rewind runs
    "\nA `+rewind` ticket is instead a one-shot method's mask (or gradual pruning's final "
    "mask) rewound to the dense run's weights at the study's `rewind.iteration` and "
    "retrained with the full recipe: a chain of one round.\n"
)


# ---------------------------------------------------------------- benchmark tables

# Execution modes in table order (the benchmark's `MODES`, CPU ones first; not imported from
# there, which would load torch); a mode this list lacks comes after them, alphabetically.
MODE_ORDER = ("dense", "sparse_csr", "onnxruntime", "dense_fp16", "semi_structured_2_4")
LATENCY_MEAN = re.compile(r"latency_(?P<mode>.+)_b(?P<batch>\d+)_ms_mean")
BYTES_PER_MB, MACS_PER_M = 1e6, 1e6
# (header, summary column, factor to the unit shown) of the hardware table's fixed columns
HARDWARE_COSTS = (
    ("Size dense (MB)", "size_dense_bytes_mean", 1 / BYTES_PER_MB),
    ("Size sparse-encoded (MB)", "size_sparse_bytes_mean", 1 / BYTES_PER_MB),
    ("MACs dense kernels (M)", "macs_dense_mean", 1 / MACS_PER_M),
    ("MACs effective (M)", "macs_effective_mean", 1 / MACS_PER_M),
    ("Peak mem (MB)", "memory_peak_bytes_mean", 1 / BYTES_PER_MB),
    ("Avg mem (MB)", "memory_avg_bytes_mean", 1 / BYTES_PER_MB),
)
ENERGY = "energy_mj_per_sample_mean"
ACCURACY = (("Top-1 (%)", "top1_mean", 100.0), ("Top-5 (%)", "top5_mean", 100.0))


def latency_columns(rows: pd.DataFrame) -> dict[tuple[str, int], str]:
    """{(mode, batch size): summary column} of the mean latencies `rows` hold; a column that is
    null in all of them is left out (the mode could not run on that device or model)."""
    found = {}
    for column in rows.columns:
        match = LATENCY_MEAN.fullmatch(column)
        if match and rows[column].notna().any():
            found[(match["mode"], int(match["batch"]))] = column
    return dict(sorted(found.items()))


def latency_batches(rows: pd.DataFrame, mode: str = "dense") -> list[int]:
    """The batch sizes at which `mode` was timed in `rows`, ascending."""
    return sorted(batch for m, batch in latency_columns(rows) if m == mode)


def _modes(columns: Mapping[tuple[str, int], str]) -> list[str]:
    known = {mode for mode, _ in columns}
    return [m for m in MODE_ORDER if m in known] + sorted(known - set(MODE_ORDER))


def _column(rows: pd.DataFrame, name: str) -> pd.Series:
    """A column of `rows`, all NaN where the summary has none (no run was benchmarked)."""
    return rows[name] if name in rows else pd.Series(math.nan, index=rows.index)


def _amount(x: float) -> str:
    """Two decimals, or two significant digits below 1, so small models do not read 0.00."""
    return f"{x:.2f}" if abs(x) >= 1 or x == 0 else f"{x:#.2g}"


def _percent(change: float) -> str:
    """A relative change in percent, "−74 %", with one decimal below 10 % in size."""
    rounded = round(change, 1) if abs(change) < 10 else round(change)
    return "±0 %" if rounded == 0 else f"{rounded:+g} %".replace("-", "−")


def _vs_dense(value: float, dense: float, missing: str) -> str:
    """`value` and its change relative to the dense model's, "0.19 (−74 %)"; the value alone
    where there is no dense value to compare with (and on the dense row itself)."""
    if pd.isna(value):
        return missing
    if pd.isna(dense) or dense == 0:
        return _amount(value)
    return f"{_amount(value)} ({_percent(100 * (value / dense - 1))})"


def _cells(rows: pd.DataFrame, column: str, factor: float, dense: Any,
           missing: str = "–") -> list[str]:
    """One hardware-table column: each row's value with its change vs the row `dense` (an
    index of `rows`, or None when the dense model was not benchmarked)."""
    values = _column(rows, column) * factor
    reference = math.nan if dense is None else values[dense]
    return [_vs_dense(v, math.nan if i == dense else reference, missing)
            for i, v in values.items()]


def _benchmarked(summary: pd.DataFrame, study: str) -> pd.DataFrame:
    """One study's rows that a benchmark measured, in table order (empty if none was)."""
    rows = _in_order(summary[summary["study"] == study])
    columns = [c for _, c, _ in HARDWARE_COSTS if c in rows] + list(latency_columns(rows).values())
    return rows[rows[columns].notna().any(axis=1)] if columns else rows.iloc[:0]


def _dense_index(rows: pd.DataFrame) -> Any:
    dense = rows.index[rows["series"] == DENSE_LABEL]
    return dense[0] if len(dense) else None


def _targets(rows: pd.DataFrame) -> list[str]:
    return [_target_text(target_key(t, c))
            for t, c in zip(rows["target_sparsity"], rows["channel_sparsity"])]


def _texts(rows: pd.DataFrame, column: str) -> str | None:
    """The distinct values of a text column over `rows`, joined, or None if it has none."""
    texts = _distinct(_column(rows, column))
    return None if pd.isna(texts) else texts


HARDWARE_UNITS = (
    "Size dense is the saved state dict, size sparse-encoded the bitmask and nonzero values "
    "compressed (what a masked model could ship as); MACs are per sample on dense kernels, and "
    "effective ones skip zero weights (what sparse kernels could at best save). Top-1/top-5 "
    "are the runs' test accuracies, as in the tables above."
)
HARDWARE_LOOK_FOR = (
    "Look for: masked models keep the dense model's size, MACs and latency and shrink only "
    "when sparse-encoded; channel pruning shrinks all of them."
)


def _hardware_note(rows: pd.DataFrame, batches: Sequence[int]) -> str:
    """What the hardware table's numbers are, once: device, memory method, the latencies
    shown, why energy is n/a where it is, and what to look for."""
    device, memory = _texts(rows, "device"), _texts(rows, "memory_method")
    on = f" on {device}" if device else ""
    how = f" ({memory})" if memory else ""
    timed = f", the median latency per batch at {' and '.join(f'b{b}' for b in batches)}" \
        if batches else ""
    sentences = [
        (f"Benchmark of each result model{on}, means over seeds; in brackets each value's "
         "change relative to the dense model, in percent (for top-1/top-5 too: relative, not "
         "percentage points)."),
        HARDWARE_UNITS,
        f"Memory{how} is measured at the largest batch size{timed}, in the dense execution mode"
        " (on CPU: the resident memory inference adds above the process's own).",
        ("Speed-up (paired) is the dense model's latency over this model's, both timed "
         "alternately in one process (dense kernels)."),
    ]
    unavailable = rows[_column(rows, ENERGY).isna()]
    if len(unavailable):
        reason = _texts(unavailable, "energy_unavailable_reason") or "not measured"
        sentences.append(f"Energy n/a: {reason}.")
    return "*" + " ".join([*sentences, HARDWARE_LOOK_FOR]) + "*\n"


def hardware_table(summary: pd.DataFrame, study: str) -> str | None:
    """The costs of every benchmarked model of a study next to its accuracy, each with its
    change vs dense, and a note on how they were measured (None if no run was benchmarked)."""
    rows = _benchmarked(summary, study)
    if rows.empty:
        return None
    dense = _dense_index(rows)
    batches = latency_batches(rows)
    shown = sorted({batches[0], batches[-1]}) if batches else []
    table = {"Method": rows["series"], "Target": _targets(rows)}
    for header, column, factor in HARDWARE_COSTS:
        table[header] = _cells(rows, column, factor, dense)
    for batch in shown:
        table[f"Latency b{batch} (ms)"] = _cells(rows, f"latency_dense_b{batch}_ms_mean", 1.0,
                                                 dense)
    if shown:
        paired = _column(rows, f"speedup_vs_dense_b{shown[-1]}_mean")
        table[f"Speed-up b{shown[-1]} (paired)"] = [
            "–" if pd.isna(v) else f"{v:.2f}×" for v in paired]
    table["Energy (mJ/sample)"] = _cells(rows, ENERGY, 1.0, dense, missing="n/a")
    for header, column, factor in ACCURACY:
        table[header] = _cells(rows, column, factor, dense)
    return _markdown(pd.DataFrame(table)) + "\n" + _hardware_note(rows, shown)


def _speedup(reference: float, latency: float) -> str:
    return "–" if pd.isna(reference) or pd.isna(latency) or latency == 0 \
        else f"{reference / latency:.2f}×"


MODES_NOTE = (
    "*Median latency per batch, means over seeds, for every execution mode that ran; a mode "
    "missing for a model could not run on the device or model. Speed-up is a reference's "
    "dense-mode latency divided by this mode's at the same batch size (above 1.00× is faster): "
    "vs own dense, the same model on dense kernels (what the execution mode alone buys); vs "
    "dense model, the unpruned model on dense kernels (what pruning and the mode buy "
    "together), timed alternately with this model in the same process where the benchmark "
    "recorded it (`speedup_vs_dense_b<batch>`), so that machine noise hits both alike. Look for: masked models on dense kernels stay near 1.00× vs the dense model, "
    "as unstructured zeros are still multiplied; sparse kernels pay off only at high sparsity, "
    "if at all; removed channels give a real speed-up.*\n"
)


def _mode_cells(latency: float, own_dense: float, dense_model: float, batch: int) -> dict:
    """One batch size's cells of an execution-mode row."""
    return {f"Latency b{batch} (ms)": "–" if pd.isna(latency) else _amount(latency),
            f"b{batch} speed-up vs own dense": _speedup(own_dense, latency),
            f"b{batch} speed-up vs dense model": _speedup(dense_model, latency)}


def modes_table(summary: pd.DataFrame, study: str) -> str | None:
    """Latency of each benchmarked model in each execution mode it ran, with the speed-up over
    its own dense mode and over the dense model's (None if no latency was measured)."""
    rows = _benchmarked(summary, study)
    columns = latency_columns(rows)
    if not columns:
        return None
    dense = _dense_index(rows)
    batches = sorted({batch for _, batch in columns})
    on_dense = {b: _column(rows, f"latency_dense_b{b}_ms_mean") for b in batches}
    lines = []
    for index, target in zip(rows.index, _targets(rows)):
        for mode in _modes(columns):
            latency = {b: _column(rows, f"latency_{mode}_b{b}_ms_mean")[index] for b in batches}
            if all(pd.isna(v) for v in latency.values()):
                continue
            line = {"Method": rows.at[index, "series"], "Target": target, "Mode": mode}
            for b in batches:
                baseline = math.nan if dense is None else on_dense[b][dense]
                paired = _column(rows, f"speedup_vs_dense_b{b}_mean")[index]
                if not pd.isna(paired) and not pd.isna(latency[b]):
                    # The paired (interleaved, same-process) speed-up of this model's dense
                    # mode, carried over to this mode by the same model's own ratio.
                    baseline = on_dense[b][index] * paired
                line.update(_mode_cells(latency[b], on_dense[b][index], baseline, b))
            lines.append(line)
    return _markdown(pd.DataFrame(lines)) + "\n" + MODES_NOTE


def at_budget(summary: pd.DataFrame, budget: bool) -> pd.DataFrame:
    """The rows asked for a budget (`budget=True`), or the others: runs asked for a cost
    have their own table and figure, the others the sparsity tables (tables written before
    budgets have none)."""
    if "budget_kind" not in summary:
        return summary.iloc[0:0] if budget else summary
    return summary[summary["budget_kind"].notna() == budget]


def budget_points(rows: pd.DataFrame) -> list[tuple[str, float, float]]:
    """The (kind, value, batch size) budget points of `rows`, in a stable order."""
    keys = rows[["budget_kind", "budget_value", "budget_batch_size"]].drop_duplicates()
    order = {kind: i for i, kind in enumerate(BUDGET_KINDS)}
    return sorted(((k, v, b) for k, v, b in keys.itertuples(index=False)),
                  key=lambda p: (order.get(p[0], 99), p[1], 0 if pd.isna(p[2]) else p[2]))


def budget_label(kind: str, value: float, batch: float) -> str:
    return Budget(kind, float(value), None if pd.isna(batch) else int(batch)).label()


def _setting(row: pd.Series) -> str:
    """What a method was set to, to meet a budget: its channel fraction or its sparsity."""
    value = row.get("budget_setting_mean", math.nan)
    if pd.isna(value):
        return "–"
    what = "channels" if _structured(row["method"]) else "sparsity"
    return f"{what} {value:.3f}"


def _structured(method: str) -> bool:
    from prunebench.pruning import METHODS

    return method in METHODS and METHODS.get(method).structured


def equal_cost_table(summary: pd.DataFrame, study: str) -> str | None:
    """Methods side by side at each budget point (`prunebench.budgets`): what each was set
    to, the cost it achieved (and how many of its runs are within the tolerance), the
    parameters and MACs it removed, its paired speed-up where benchmarked, and its accuracy.
    For masks, "MACs removed" in a `macs` budget counts nonzero-weight MACs (zeros skipped);
    the dense-kernel MACs column shows they still cost every MAC."""
    rows = at_budget(summary[summary["study"] == study], budget=True)
    if rows.empty:
        return None
    parts = []
    dense = summary[(summary["study"] == study) & (summary["series"] == DENSE_LABEL)]
    for kind, value, batch in budget_points(rows):
        point = _in_order(rows[(rows["budget_kind"] == kind) & (rows["budget_value"] == value)
                               & ((rows["budget_batch_size"] == batch) if not pd.isna(batch)
                                  else rows["budget_batch_size"].isna())])
        table = {
            "Method": point["series"],
            "Set to": [_setting(r) for _, r in point.iterrows()],
            "Achieved": [_achieved(kind, r) for _, r in point.iterrows()],
            "Within tolerance": [_met(r) for _, r in point.iterrows()],
            "Params removed": point["param_reduction_mean"].map(_percent_of),
            "MACs removed (dense kernels)": point["macs_reduction_mean"].map(_percent_of),
        }
        if "macs_effective_mean" in point and "macs_dense_mean" in point:
            table["MACs removed (zeros skipped)"] = [
                _percent_of(1 - (1 - r["macs_reduction_mean"]) * r["macs_effective_mean"]
                            / r["macs_dense_mean"]) for _, r in point.iterrows()]
        speed = f"speedup_vs_dense_b{int(batch) if not pd.isna(batch) else 128}_mean"
        if speed in point:
            table[f"Speed-up b{int(batch) if not pd.isna(batch) else 128} (paired)"] = \
                point[speed].map(lambda x: "–" if pd.isna(x) else f"{x:.2f}×")
        table.update(_accuracy_columns(point))
        parts.append(f"**{budget_label(kind, value, batch)}**\n")
        parts.append(_markdown(pd.DataFrame(table)))
    note = EQUAL_COST_NOTE
    if len(dense):
        note += f" Dense top-1: {dense['top1_mean'].iloc[0] * 100:.2f} %."
    return "\n".join(parts) + "\n" + note + "\n"


EQUAL_COST_NOTE = (
    "Each method is set (by search on the real pruning, or exactly for a mask's parameter "
    "count) to meet the budget; *Achieved* is what its model reached in the budget's unit, "
    "*Within tolerance* how many of its runs are within the budget's relative tolerance. "
    "Structured methods remove channels, so their MACs and latency fall with their parameters; "
    "a mask's MACs fall only for a kernel that skips zeros."
)


def _achieved(kind: str, row: pd.Series) -> str:
    value = row.get("budget_achieved_mean", math.nan)
    if pd.isna(value):
        return "–"
    if kind in ("params", "macs"):
        return f"{value * 100:.1f} % removed"
    return f"{value:.2f}×"


def _met(row: pd.Series) -> str:
    share, n = row.get("budget_met_mean", math.nan), int(row["n"])
    return "–" if pd.isna(share) else f"{round(share * n)}/{n}"


def _percent_of(x: float) -> str:
    return "–" if pd.isna(x) else f"{x * 100:.1f} %"


def study_markdown(summary: pd.DataFrame, study: str) -> list[str]:
    """The tables of one study, each under a `###` heading (the ones it has rows for).
    Runs asked for a budget are in their own table, at equal cost."""
    budgeted = summary
    summary = at_budget(summary, budget=False)
    tables = [
        ("Dense and unstructured methods (weight sparsity)", study_table(summary, study)),
        ("Structured methods (channels removed)", structured_table(summary, study)),
        ("Fine-tuning vs. distillation", recovery_table(summary, study)),
        ("Lottery tickets vs. random reinitialisation", lottery_table(summary, study)),
        ("Hardware cost (benchmark)", hardware_table(summary, study)),
        ("Execution modes (benchmark latency)", modes_table(summary, study)),
        ("At equal cost (budgets)", equal_cost_table(budgeted, study)),
    ]
    parts = []
    for heading, table in tables:
        if table is not None:
            parts += [f"### {heading}\n", table]
    return parts


def studies(summary: pd.DataFrame) -> list[str]:
    return sorted(summary["study"].dropna().unique())


TABLES_NOTE = (
    "Target sparsity is the fraction of prunable weights a method was asked to zero. Achieved "
    "sparsity is counted from the saved weights: the fraction of all conv/linear weights of "
    "the model that are zero (layers outside the pruning scope included), and zero params "
    "that of all parameters, biases and BatchNorm included. Structured methods are asked for "
    "a fraction of *channels* to remove, which is no weight sparsity; their params and MACs "
    "removed are measured against the unpruned architecture (means over seeds). Masked "
    "(unstructured) models keep their MACs on dense kernels.\n"
)


def summary_markdown(summary: pd.DataFrame) -> str:
    parts = ["# Results summary\n",
             ("Top-1/top-5 test accuracy as mean ± sample std over seeds (– where n = 1); Δ is "
              "the mean top-1 difference to the study's dense model in percentage points.\n"),
             TABLES_NOTE]
    for study in studies(summary):
        parts.append(f"## {study}\n")
        parts += study_markdown(summary, study)
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
        if "recovery" not in frame:
            raise ConfigError(f"{str(path)!r} has no recovery column: not a table of "
                              "`prunebench aggregate`")
        frames.append(upgrade_legacy_table(frame))
    return frames[0], frames[1]


def upgrade_legacy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """A runs or summary table written before the `control` and `series` columns, in the
    current shape (the committed tables of earlier studies are such tables): the old label
    was the series name; the control comes from the old method (`lottery` -> ticket,
    `lottery_reinit` -> reinit), and the label loses the suffix its own recovery or control
    added (`normalise_legacy_record`). A current table is returned unchanged."""
    if "control" in frame and "series" in frame:
        return frame
    records = []
    for row in frame.to_dict("records"):
        kind = {"lottery": "lottery", "lottery_reinit": "lottery_reinit"}.get(row.get("method"))
        new = normalise_legacy_record({**row, "kind": kind})
        records.append({"control": new["control"], "label": new["label"],
                        "method": new["method"], "series": row["label"]})
    fixed = frame.copy()
    for column in ("label", "method"):
        fixed[column] = [r[column] for r in records]
    at = list(fixed.columns).index("recovery") + 1
    fixed.insert(at, "control", [r["control"] for r in records])
    fixed.insert(at + 1, "series", [r["series"] for r in records])
    return fixed
