"""Results pages: one page per study in the docs, an index of them, and the README's block of
headline numbers, all written by the workflow from its own tables.

A study's page (`docs/results/<study>.md`) opens with how the study was made: the command
that ran the workflow, its elapsed and summed job time (`granularity.json`), the code commit,
machine and threads of its runs. Then the reporting checklist, the comparison with the papers
the study declares (`studies.<s>.papers`, `prunebench.papers`: the paper's number beside this
study's mean ± std at the same point, and the difference computed here), the tables and the
figures. The index (`docs/results/index.md`) and the README's block between
`<!-- results:begin -->` and `<!-- results:end -->` list every study whose tables are in
`results/studies/`, with a few headline numbers, each linking to its page.

Nothing here is typed by hand: rerunning on the same tables gives the same bytes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from prunebench.analysis.aggregate import (
    DENSE_LABEL,
    TABLES_NOTE,
    at_budget,
    budget_points,
    headline_metrics,
    headline_rows,
    read_tables,
    study_markdown,
)
from prunebench.analysis.checklist import checklist_data, checklist_markdown
from prunebench.analysis.names import plot_names
from prunebench.analysis.plots import plot_filename
from prunebench.analysis.report import (
    CAPTIONS,
    CHECKLIST_HEADING,
    TITLES,
    _figures,
    _link,
    provenance_lines,
    _threads_line,
)
from prunebench.errors import ConfigError
from prunebench.io import atomic_write_text
from prunebench.papers import Paper

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
INDEX_NAME = "index.md"


def _duration(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "not recorded"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def _pct(x: float, digits: int = 2) -> str:
    return "–" if x is None or pd.isna(x) else f"{100 * x:.{digits}f}"


def _mean_std(mean: float, std: float, scale: float = 100.0, digits: int = 2) -> str:
    if pd.isna(mean):
        return "–"
    if pd.isna(std):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def read_granularity(path: Path | None) -> dict | None:
    if path is None or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------- one study's page


def made_markdown(runs: pd.DataFrame, granularity: dict | None) -> str:
    """How the study was made: the command, elapsed and job time (from the workflow's
    `granularity.json`), then the environments, code and threads of its runs."""
    lines = ["## How it was made\n"]
    if granularity is None:
        lines.append("Command and wall time: not recorded (no `granularity.json`: the tables "
                     "were not made by the workflow).\n")
    else:
        command = granularity.get("command")
        lines.append(f"- Command: `{command}`" if command else
                     "- Command: not recorded (made before the workflow recorded it)")
        elapsed = granularity.get("elapsed_s")
        lines.append(f"- Elapsed: {_duration(elapsed)}, {granularity['elapsed_method']}"
                     if elapsed is not None else
                     "- Elapsed: not recorded (made before the workflow recorded it)")
        lines.append(f"- Job time: {_duration(granularity.get('job_wall_s_total'))} summed over "
                     f"{granularity.get('jobs', 0):,} jobs; start-up overhead "
                     f"{_pct(granularity.get('startup_share'), 1)} % of it")
        lines.append("")
    lines.append(_threads_line(runs))
    lines.append(provenance_lines(runs))
    return "\n".join(lines)


def _point_rows(summary: pd.DataFrame, study: str, series: str, sparsity: float | None,
                ) -> pd.DataFrame:
    rows = at_budget(summary[summary["study"] == study], budget=False)
    rows = rows[rows["series"] == series]
    if sparsity is None:
        return rows
    target = rows["target_sparsity"].where(rows["target_sparsity"].notna(),
                                           rows["channel_sparsity"])
    return rows[(target - sparsity).abs() < 1e-6]


def papers_markdown(summary: pd.DataFrame, study: str, papers: Sequence[Paper]) -> str:
    """Each paper: its numbers beside this study's at the same points, the difference
    computed; its claims as its words."""
    parts = []
    for paper in papers:
        cite = f"[{paper.cite}]({paper.url})" if paper.url else paper.cite
        parts.append(f"### Compared with {cite}\n")
        if paper.values:
            unit = "test error (%)" if paper.metric == "error" else "test top-1 (%)"
            parts.append(f"| Point | Paper, {unit} | This study, {unit} | This − paper (pp) | Seeds |")
            parts.append("|:--|--:|--:|--:|--:|")
            for value in paper.values:
                rows = _point_rows(summary, study, value.series, value.sparsity)
                point = (value.series if value.sparsity is None
                         else f"{value.series} at {value.sparsity:g}")
                if rows.empty:
                    parts.append(f"| {point} | {value.value:g} | not run | – | 0 |")
                    continue
                row = rows.iloc[0]
                ours = paper.from_top1(row["top1_mean"])
                std = 100.0 * row["top1_std"] if pd.notna(row["top1_std"]) else math.nan
                shown = f"{ours:.2f}" + ("" if pd.isna(std) else f" ± {std:.2f}")
                parts.append(f"| {point} | {value.value:g} | {shown} | {ours - value.value:+.2f} "
                             f"| {int(row['n'])} |")
            parts.append("")
            better = "lower" if paper.metric == "error" else "higher"
            parts.append(f"*Mean ± sample std over seeds; {better} is better. The paper's "
                         "numbers are declared in the study's `papers:` in `params.yaml`; "
                         "this study's come from its tables.*\n")
        if paper.claims:
            parts.append("What the paper reports, to check against the tables and figures on "
                         "this page:\n")
            parts += [f"- {claim}" for claim in paper.claims]
            parts.append("")
    return "\n".join(parts)


def _promote(lines: list[str]) -> list[str]:
    """The report's `###` sections as a page's `##` sections."""
    return [re.sub(r"^###", "##", part, flags=re.M) for part in lines]


def _overview(summary: pd.DataFrame, runs: pd.DataFrame, study: str) -> str:
    rows = summary[summary["study"] == study]
    first = rows.iloc[0]
    methods = sorted({s for s in rows["method"].dropna() if s != DENSE_LABEL})
    seeds = sorted(runs.loc[runs["study"] == study, "seed"].dropna().astype(int).unique())
    series = rows["series"].nunique() - int((rows["series"] == DENSE_LABEL).any())
    return (f"`{first['model']}` on `{first['dataset']}`: {len(methods)} "
            f"method{'s' if len(methods) != 1 else ''} "
            f"({series} series with their recoveries and controls), "
            f"{len(runs[runs['study'] == study]):,} runs over {len(seeds)} "
            f"seed{'s' if len(seeds) != 1 else ''} "
            f"({', '.join(map(str, seeds))}).\n")


def render_page(tables_dir: Path, plots_dir: Path, page: Path, study: str,
                granularity: dict | None = None, papers: Sequence[Paper] = (),
                docs_plots: Path | None = None) -> str:
    """The page of `study`: figures exist in `plots_dir` and are linked through
    `docs_plots` (default: `plots/` beside the page's directory, the docs' link to
    `results/plots`)."""
    runs, summary = read_tables(tables_dir)
    if study not in set(summary["study"]):
        raise ConfigError(f"study {study!r} has no rows in {str(Path(tables_dir))!r}")
    page = Path(page)
    here = page.parent
    docs_plots = Path(docs_plots) if docs_plots is not None else here.parent / "plots"
    study_runs = runs[runs["study"] == study]
    tables = Path(tables_dir).as_posix()
    parts = [f"# {study}\n", _overview(summary, runs, study),
             f"Generated by `prunebench page` from the tables in `{tables}/` and the figures "
             "of the workflow; no number on this page is typed by hand. Accuracies are on the "
             "test split, mean ± sample standard deviation over seeds, in percent. "
             + TABLES_NOTE,
             made_markdown(study_runs, granularity)]
    checklist = checklist_data(runs, figures=_figures(plots_dir))
    if study in checklist["studies"]:
        parts += [f"## {CHECKLIST_HEADING}\n",
                  checklist_markdown(checklist["studies"][study]),
                  f"The same as data: `{tables}/checklist.json`.\n"]
    if papers:
        parts.append("## Compared with papers\n")
        parts.append(papers_markdown(summary, study, papers))
    parts += _promote(study_markdown(summary, study))
    has_budgets = not at_budget(summary[summary["study"] == study], budget=True).empty
    figures = [name for name in plot_names(has_budgets)
               if (Path(plots_dir) / plot_filename(study, name)).is_file()]
    if figures:
        parts.append("## Figures\n")
    for name in figures:
        link = _link(docs_plots / plot_filename(study, name), here)
        parts += [f"### {TITLES[name]}\n", f"![{study}: {TITLES[name].lower()}]({link})\n",
                  f"*{CAPTIONS[name]}*\n"]
    parts.append("## Data\n")
    parts.append(f"One row per run with every metric and its run directory: `{tables}/runs.csv`; "
                 f"per grid point means and stds: `{tables}/summary.csv`; the report with the "
                 f"same tables: `{tables}/report.md`.\n")
    return "\n".join(parts)


def write_page(tables_dir: Path, plots_dir: Path, page: Path, study: str,
               granularity_path: Path | None = None, papers: Sequence[Paper] = (),
               docs_plots: Path | None = None) -> Path:
    text = render_page(tables_dir, plots_dir, page, study, read_granularity(granularity_path),
                       papers, docs_plots)
    return atomic_write_text(page, text)


# ---------------------------------------------------------------- the index and the README


# An installation check: its numbers mean nothing, and its results are not committed.
UNLISTED = ("smoke",)


def _study_dirs(studies_root: Path) -> list[Path]:
    return sorted(p for p in Path(studies_root).iterdir()
                  if (p / "summary.csv").is_file() and (p / "runs.csv").is_file()
                  and p.name not in UNLISTED)


def _best_removed(summary: pd.DataFrame, study: str) -> tuple[float | None, str | None]:
    """The most parameters any series removed with top-1 within one point of dense."""
    rows = headline_rows(headline_metrics(summary)).get(study, {})
    ok = [(r["removed_within_1pt"], s, r["at_target"]) for s, r in rows.items()
          if r["removed_within_1pt"] is not None]
    if not ok:
        return None, None
    removed, series, target = max(ok, key=lambda x: (x[0], x[1]))
    return removed, f"{series} at {_target(target)}"


def _target(key: str) -> str:
    """A headline target key ("s0.9375", "c0.30") in words."""
    value = float(key[1:])
    if key.startswith("c"):
        return f"{100 * value:.4g} % of channels"
    return f"sparsity {value:.4g}"


def study_rows(studies_root: Path) -> list[dict]:
    """One row per study with tables: its headline numbers."""
    out = []
    for directory in _study_dirs(studies_root):
        runs, summary = read_tables(directory)
        for study in sorted(summary["study"].unique()):
            rows = summary[summary["study"] == study]
            dense = rows[rows["series"] == DENSE_LABEL]
            removed, where = _best_removed(summary, study)
            granularity = read_granularity(directory / "granularity.json")
            out.append({
                "study": study,
                "model": rows.iloc[0]["model"], "dataset": rows.iloc[0]["dataset"],
                "runs": int((runs["study"] == study).sum()),
                "seeds": int(runs.loc[runs["study"] == study, "seed"].nunique()),
                "dense": (None if dense.empty else
                          _mean_std(dense.iloc[0]["top1_mean"], dense.iloc[0]["top1_std"])),
                "removed": removed, "where": where,
                "elapsed": None if granularity is None else granularity.get("elapsed_s"),
            })
    return out


def _equal_cost_rows(studies_root: Path) -> tuple[str, str, list[str]] | None:
    """The first study with budgets: its methods at its middle MACs (or other) budget."""
    for directory in _study_dirs(studies_root):
        _, summary = read_tables(directory)
        budgeted = at_budget(summary, budget=True)
        if budgeted.empty:
            continue
        study = sorted(budgeted["study"].unique())[0]
        rows = budgeted[budgeted["study"] == study]
        points = budget_points(rows)
        kind, value, batch = points[len(points) // 2]
        at = rows[(rows["budget_kind"] == kind) & ((rows["budget_value"] - value).abs() < 1e-9)]
        lines = ["| Method | Top-1 (%) | Params removed | Speed-up, eager b128 | "
                 "ONNX Runtime over eager, b128 |", "|:--|--:|--:|--:|--:|"]
        for _, row in at.sort_values("top1_mean", ascending=False).iterrows():
            ort = (row.get("latency_dense_b128_ms_mean", math.nan)
                   / row.get("latency_onnxruntime_b128_ms_mean", math.nan))
            lines.append(
                f"| {row['series']} | {_mean_std(row['top1_mean'], row['top1_std'])} | "
                f"{_pct(row.get('param_reduction_mean'), 0)} % | "
                f"{row.get('speedup_vs_dense_b128_mean', math.nan):.2f}× | "
                + ("–" if pd.isna(ort) else f"{ort:.1f}×") + " |")
        label = {"macs": "MACs", "params": "parameters"}.get(kind, kind)
        what = (f"{100 * value:.0f} % of the {label} removed" if kind in ("macs", "params")
                else f"{kind} {value:g}")
        return study, f"every method at {what}", lines
    return None


def index_markdown(studies_root: Path, pages_dir: Path, link_from: Path) -> str:
    """The table of studies with links to their pages (relative to directory `link_from`)."""
    lines = ["| Study | Model · data | Runs (seeds) | Dense top-1 (%) | Most params removed "
             "within 1 pt of dense | Made in |", "|:--|:--|--:|--:|:--|--:|"]
    for row in study_rows(studies_root):
        page = Path(pages_dir) / f"{row['study']}.md"
        name = (f"[{row['study']}]({_link(page, link_from)})" if page.is_file()
                else row["study"])
        removed = ("none within 1 pt" if row["removed"] is None
                   else f"{100 * row['removed']:.1f} % ({row['where']})")
        lines.append(f"| {name} | `{row['model']}` · `{row['dataset']}` | {row['runs']:,} "
                     f"({row['seeds']}) | {row['dense'] or '–'} | {removed} | "
                     f"{_duration(row['elapsed'])} |")
    return "\n".join(lines) + "\n"


def readme_block(studies_root: Path, pages_dir: Path, readme_dir: Path) -> str:
    parts = [index_markdown(studies_root, pages_dir, readme_dir)]
    equal = _equal_cost_rows(studies_root)
    if equal is not None:
        study, what, lines = equal
        page = Path(pages_dir) / f"{study}.md"
        parts.append(f"At equal cost ([{study}]({_link(page, readme_dir)}): {what}), "
                     "mean over seeds. The speed-up is the dense "
                     "model's eager latency over this model's, timed alternately in one "
                     "process; ONNX Runtime's column is the same model's eager latency over "
                     "its ONNX Runtime latency. The study's page has the full tables.\n")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def write_index(studies_root: Path, pages_dir: Path) -> Path:
    pages_dir = Path(pages_dir)
    text = "\n".join([
        "# Results\n",
        "Every study whose tables are in `results/studies/`, made by the workflow; each "
        "page says how: the commit, machine and threads of its runs, and the command and "
        "wall time for studies made since the workflow records them. Generated by "
        "`prunebench pages`; no number here is typed by hand.\n",
        index_markdown(studies_root, pages_dir, pages_dir),
    ])
    return atomic_write_text(pages_dir / INDEX_NAME, text)


def update_readme(readme: Path, studies_root: Path, pages_dir: Path) -> bool:
    """Replace the README's block between the markers; False if it was already current."""
    readme = Path(readme)
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ConfigError(f"{str(readme)!r} has no {BEGIN} ... {END} block for the results")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    block = readme_block(studies_root, pages_dir, readme.parent)
    new = f"{head}{BEGIN}\n{block}{END}{tail}"
    if new == text:
        return False
    atomic_write_text(readme, new)
    return True
