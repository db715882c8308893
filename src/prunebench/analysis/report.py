"""A markdown report: per study the results tables and the figures, with captions.

The report holds no timestamps or absolute paths, so regenerating it from the same tables
and plots gives the same bytes (DVC and Snakemake then see no change).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from prunebench.analysis.aggregate import (
    TABLES_NOTE,
    read_tables,
    studies,
    study_markdown,
)
from prunebench.analysis.checklist import checklist_data, checklist_markdown, write_checklist
from prunebench.analysis.names import PLOTS, plot_names
from prunebench.analysis.plots import COLLAPSE_PP, plot_filename
from prunebench.io import atomic_write_text

TITLES = {
    "accuracy_vs_sparsity": "Accuracy vs. sparsity",
    "delta_vs_dense": "Accuracy change vs. dense",
    "params_remaining": "Parameters remaining",
    "accuracy_vs_params": "Accuracy vs. parameters remaining",
    "accuracy_vs_macs": "Accuracy vs. MACs remaining",
    "pareto_macs": "Accuracy vs. MACs (benchmark, Pareto front)",
    "pareto_latency": "Accuracy vs. latency (benchmark, Pareto front)",
    "training_curves": "Training curves",
    "lottery_tickets": "Lottery tickets against random reinitialisation",
    "equal_cost": "Methods at equal cost (budgets)",
}

CAPTIONS = {
    "accuracy_vs_sparsity": (
        "Test top-1 accuracy against the achieved weight sparsity (fraction of all conv/linear "
        "weights of the saved model that are zero), one line per unstructured method, mean over seeds with a ±1 std band. "
        "The dashed line and grey band are the dense model. The x axis is in log-density, "
        "-log10(1 − sparsity), so 0.9, 0.99, 0.999 are evenly spaced; ticks mark the grid "
        "sparsities. Structured methods have no weight-sparsity target and appear in the "
        "parameters- and MACs-remaining figures instead."
        f" The accuracy axis is zoomed to where the methods differ: it spans the dense model's band and every point within {COLLAPSE_PP:g} percentage points of the best one; a model further down has collapsed and is drawn as a downward triangle on the lower edge, in its method's colour, with its true top-1 written above it. Each method keeps one colour and marker in every figure of the study."
    ),
    "delta_vs_dense": (
        "Mean test top-1 of each method minus the mean of the dense model, in percentage "
        "points, grouped by target weight sparsity (unstructured methods); error bars are the "
        "method's std over seeds. Bars below zero lost accuracy to pruning. The method's marker "
        f"sits on each bar's end; a bar more than {COLLAPSE_PP:g} points below the best ends at the lower "
        "edge with a triangle and its true change written above it."
    ),
    "params_remaining": (
        "Nonzero parameters as a share of all parameters (biases and unprunable layers "
        "included) against the target sparsity; the dotted line is 1 − target sparsity, what "
        "is left of the prunable weights alone. Unstructured methods only."
    ),
    "accuracy_vs_params": (
        "Test top-1 accuracy of every method (structured ones dash-dotted, distilled ones "
        "labelled +distill) against the measured fraction of the unpruned model's parameters "
        "left, 1 − params removed, on a log axis that decreases to the right; mean over seeds "
        "with a ±1 std band. Methods are compared at equal remaining size whatever they "
        "prune: a structured method's channel fraction is not on this axis, what it removed is."
        f" The accuracy axis is zoomed to where the methods differ: it spans the dense model's band and every point within {COLLAPSE_PP:g} percentage points of the best one; a model further down has collapsed and is drawn as a downward triangle on the lower edge, in its method's colour, with its true top-1 written above it. Each method keeps one colour and marker in every figure of the study."
    ),
    "accuracy_vs_macs": (
        "Test top-1 accuracy against the measured fraction of the unpruned model's MACs left "
        "on dense kernels, 1 − MACs removed. Masked (unstructured) models sit at 100 %: their "
        "zeros still cost multiply-accumulates without sparse kernels; only removed channels "
        "save compute."
        f" The accuracy axis is zoomed to where the methods differ: it spans the dense model's band and every point within {COLLAPSE_PP:g} percentage points of the best one; a model further down has collapsed and is drawn as a downward triangle on the lower edge, in its method's colour, with its true top-1 written above it. Each method keeps one colour and marker in every figure of the study."
    ),
    "pareto_macs": (
        "Mean test top-1 of every benchmarked model against its MACs per sample on dense "
        "kernels (log scale), one marker per method, the dense model as a black star; the "
        "thin grey step line is the Pareto front, the models no cheaper model beats. Masked "
        "(unstructured) models sit at the dense model's MACs; their hollow markers show the "
        "effective MACs, what kernels that skip zeros could at best save. Look for which "
        "methods reach the front: on dense kernels only removed channels move a model left."
        f" The accuracy axis is zoomed to where the methods differ: it spans the dense model's band and every point within {COLLAPSE_PP:g} percentage points of the best one; a model further down has collapsed and is drawn as a downward triangle on the lower edge, in its method's colour, with its true top-1 written above it. Each method keeps one colour and marker in every figure of the study."
    ),
    "pareto_latency": (
        "Mean test top-1 against the measured median latency in the dense execution mode at "
        "the largest batch size (log scale), with the Pareto front as a thin grey step line. "
        "Masked models sit at the dense model's latency: unstructured sparsity gives no "
        "speed-up on dense kernels. Channel-pruned models are smaller dense models and run "
        "faster; the execution-mode table shows whether sparse kernels change that."
        f" The accuracy axis is zoomed to where the methods differ: it spans the dense model's band and every point within {COLLAPSE_PP:g} percentage points of the best one; a model further down has collapsed and is drawn as a downward triangle on the lower edge, in its method's colour, with its true top-1 written above it. Each method keeps one colour and marker in every figure of the study."
    ),
    "training_curves": (
        "Validation top-1 per epoch, averaged over seeds (band: ±1 std), for the dense model "
        "and each unstructured method at its highest target sparsity. Recovered (fine-tuned "
        "or distilled) methods count epochs from the start of recovery; lottery tickets and "
        "their reinitialised controls retrain with the full recipe. Markers on a few epochs "
        "identify the method."
    ),
    "lottery_tickets": (
        "Frankle & Carbin's two curves: test top-1 (left) and the early-stopping iteration, "
        "the iteration of minimum validation loss, recorded once per epoch (right), against "
        "the percentage of weights remaining (log scale), mean ±1 std over seeds. Solid: "
        "the winning tickets (iterative magnitude pruning, survivors rewound); dashed: the "
        "same masks trained from a fresh random initialisation, each control in its own colour "
        "and marker. Both start at the dense "
        "model (100 %). Tickets should hold dense accuracy, and learn faster (stop earlier), "
        "far below the sparsity where the controls fall behind."
    ),
    "equal_cost": (
        "Test top-1 of every method asked for the same cost, one panel per kind of budget "
        "(parameters or MACs removed, compression, measured speed-up), mean ±1 std over "
        "seeds; the dashed line is the dense model. Each method was set to meet the budget "
        "(structured methods by search on the real channel surgery, masks by their exact "
        "parameter count or a search on nonzero-weight MACs), so the panels compare methods "
        "at equal cost rather than at equal settings. Points are placed at the budget asked "
        "for; a hollow marker is a point that some run missed by more than the budget's "
        "tolerance (the table above gives what each achieved)."
        f" The accuracy axis is zoomed to where the methods differ: it spans the dense model's band and every point within {COLLAPSE_PP:g} percentage points of the best one; a model further down has collapsed and is drawn as a downward triangle on the lower edge, in its method's colour, with its true top-1 written above it. Each method keeps one colour and marker in every figure of the study."
    ),
}


def _link(target: Path, start: Path) -> str:
    """`target` relative to directory `start`, with forward slashes (markdown links)."""
    return Path(os.path.relpath(target, start)).as_posix()


def _threads_line(runs) -> str:
    """The torch thread counts the study's runs were made with: results depend on it."""
    if "threads" not in runs or runs["threads"].isna().all():
        return "Torch threads per run: not recorded.\n"
    counts = runs["threads"].dropna().astype(int).value_counts().sort_index()
    shown = ", ".join(f"{t} ({n} runs)" for t, n in counts.items())
    return f"Torch threads per run: {shown}.\n"


def provenance_lines(runs) -> str:
    """The environments and code versions that made a study's runs (`prunebench.provenance`),
    with a warning when there are several: their numbers then come from different
    computations (a run name says what was computed, not on which code path)."""
    if "env_id" not in runs or runs["env_id"].isna().all():
        return "Made by: not recorded (runs made before provenance was recorded).\n"
    fields = ["env_id", "cpu_model", "cpu_capability", "determinism", "torch_version", "gpu"]
    runs = runs.reindex(columns=sorted({*runs.columns, *fields, "code_commit", "code_dirty"}))
    envs = runs[fields].astype(object).where(runs[fields].notna(), None)
    counts = envs.value_counts(dropna=False)
    lines = ["Made by (environment: runs):\n"]
    for key, n in counts.items():
        env = {f: v if isinstance(v, str) else None for f, v in zip(fields, key)}
        where = env["gpu"] or f"{env['cpu_model']} ({env['cpu_capability']})"
        lines.append(f"- `{env['env_id']}`: {where}, torch {env['torch_version']}, "
                     f"{env['determinism'] or 'native'}: {n} runs")
    unrecorded = int(runs["env_id"].isna().sum())
    if unrecorded:
        lines.append(f"- not recorded: {unrecorded} runs")
    codes = runs["code_commit"].astype(object).where(runs["code_commit"].notna(), None)
    dirty = runs["code_dirty"].astype(object).where(runs["code_dirty"].notna(), None)
    versions = sorted({f"{c}{'+dirty' if d else ''}" for c, d in zip(codes, dirty)
                       if c is not None})
    lines.append(f"\nCode: {', '.join(f'`{v}`' for v in versions) or 'not recorded'}.\n")
    warnings = []
    if len(counts) + (1 if unrecorded else 0) > 1:
        warnings.append(f"this study's runs come from {len(counts) + (1 if unrecorded else 0)} "
                        "environments; numbers from different CPU code paths differ (`prunebench "
                        "compare` says by how much)")
    if len(versions) > 1 or (versions and unrecorded):
        warnings.append(f"this study's runs come from {len(versions) + (1 if unrecorded else 0)}"
                        " code versions (`prunebench status` lists runs made by older source)")
    lines += [f"> **Warning:** {w}.\n" for w in warnings]
    return "\n".join(lines) + "\n"


CHECKLIST_HEADING = "Reporting checklist (Blalock et al. 2020)"
CHECKLIST_NAME = "checklist.json"


def _figures(plots_dir: Path) -> Callable[[str], list[str]]:
    """study -> the names (of PLOTS) of its figures that exist in `plots_dir`."""
    return lambda study: [name for name in PLOTS
                          if (Path(plots_dir) / plot_filename(study, name)).is_file()]


def report_checklist(tables_dir: Path, plots_dir: Path) -> dict:
    """The reporting checklist of every study in the tables (`checklist.checklist_data`),
    checking the shared figures against those in `plots_dir`."""
    runs, _ = read_tables(tables_dir)
    return checklist_data(runs, figures=_figures(plots_dir))


def render_report(tables_dir: Path, plots_dir: Path, out_path: Path,
                  checklist: dict | None = None, checklist_path: Path | None = None) -> str:
    """The report text; figure links are relative to `out_path`'s directory, and only figures
    that exist are linked. Each study's section opens with its reporting checklist
    (`checklist`, computed here if not given; `checklist_path` is linked as its data)."""
    runs, summary = read_tables(tables_dir)
    here = Path(out_path).parent
    if checklist is None:
        checklist = checklist_data(runs, figures=_figures(plots_dir))
    data_link = None if checklist_path is None else _link(Path(checklist_path), here)
    tables_link, plots_link = _link(Path(tables_dir), here), _link(Path(plots_dir), here)
    parts = [
        "# Pruning benchmark report\n",
        ("Generated by `prunebench report` from the tables in "
         f"`{tables_link}/` (written by `prunebench aggregate` from the run directories) and "
         f"the figures in `{plots_link}/` (written by `prunebench plot`). Rerunning the "
         "workflow on the same runs reproduces this file byte for byte.\n"),
        "Accuracies are on the test split, as mean ± sample standard deviation (ddof = 1) over "
        "seeds, in percent; – means a single seed. " + TABLES_NOTE,
    ]
    for study in studies(summary):
        parts.append(f"## {study}\n")
        parts.append(_threads_line(runs[runs["study"] == study]))
        parts.append(provenance_lines(runs[runs["study"] == study]))
        if study in checklist["studies"]:
            parts += [f"### {CHECKLIST_HEADING}\n",
                      checklist_markdown(checklist["studies"][study], data_link)]
        parts += study_markdown(summary, study)
        for name in plot_names(True):  # the equal-cost figure exists for budget studies only
            plot = Path(plots_dir) / plot_filename(study, name)
            if not plot.is_file():  # the workflow draws only the figures a study fills
                continue
            parts.append(f"### {TITLES[name]}\n")
            parts.append(f"![{study}: {TITLES[name].lower()}]({_link(plot, here)})\n")
            parts.append(f"*{CAPTIONS[name]}*\n")
    counts = runs.groupby("study").size()
    per_study = ", ".join(f"{study}: {counts[study]}" for study in sorted(counts.index))
    parts.append("## Runs\n")
    parts.append(
        f"{len(runs)} runs in total ({per_study}). One row per run, with every metric and its "
        f"run directory: [runs.csv]({tables_link}/runs.csv); per-group means and stds: "
        f"[summary.csv]({tables_link}/summary.csv).\n"
    )
    return "\n".join(parts)


def write_report(tables_dir: Path, plots_dir: Path, out_path: Path,
                 checklist_path: Path | None = None) -> Path:
    """Write the markdown report to `out_path` and its reporting checklist as data to
    `checklist_path` (default: `checklist.json` beside the report), each atomically; returns
    the report's path."""
    checklist_path = Path(checklist_path or Path(out_path).parent / CHECKLIST_NAME)
    checklist = report_checklist(tables_dir, plots_dir)
    text = render_report(tables_dir, plots_dir, out_path, checklist, checklist_path)
    write_checklist(checklist, checklist_path)
    return atomic_write_text(out_path, text)
