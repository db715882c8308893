"""CLI subcommands of the analysis stage (aggregate, plot, report, headline, compare).

This module is imported to build the `prunebench` parser for every command, so pandas and
matplotlib are imported only when an analysis command actually runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prunebench.errors import ConfigError

from prunebench.analysis.names import plot_names  # noqa: E402 (plain Python, cheap)

COMMANDS: tuple[str, ...] = ("aggregate", "plot", "report", "headline", "compare")


def add_subcommands(sub) -> None:
    """Add the analysis subcommands to the `prunebench` parser."""
    ag = sub.add_parser("aggregate", help="collect finished runs into runs.csv, summary.csv/.md")
    ag.add_argument("manifests", nargs="*", type=Path, metavar="MANIFEST",
                    help="job manifests written by train/finetune/distill/rewind/lottery "
                         "--manifest")
    ag.add_argument("--manifest-list", type=Path, metavar="FILE",
                    help="a file listing more manifests, one path per line")
    ag.add_argument("--out", type=Path, required=True, metavar="DIR", help="tables directory")
    ag.add_argument("--metrics", type=Path, metavar="FILE",
                    help="also write the headline top-1 metrics (JSON, for DVC) here")
    pl = sub.add_parser("plot", help="draw the per-study figures from the tables")
    pl.add_argument("--tables", type=Path, required=True, metavar="DIR")
    pl.add_argument("--out", type=Path, required=True, metavar="DIR", help="plots directory")
    pl.add_argument("--figures", nargs="+", metavar="NAME",
                    choices=list(plot_names(has_budgets=True)),
                    help="draw only these figures (default: every figure the study has)")
    rp = sub.add_parser("report", help="write the markdown report from tables and figures")
    rp.add_argument("--tables", type=Path, required=True, metavar="DIR")
    rp.add_argument("--plots", type=Path, required=True, metavar="DIR")
    rp.add_argument("--out", type=Path, required=True, metavar="FILE", help="report.md path")
    rp.add_argument("--checklist", type=Path, metavar="FILE",
                    help="where to write the reporting checklist as JSON (default: "
                         "checklist.json beside the report)")
    hl = sub.add_parser("headline", help="a study's headline: one small JSON file per method "
                        "(for `dvc metrics show`)")
    hl.add_argument("metrics", nargs="+", type=Path, metavar="FILE",
                    help="the study's metrics.json written by `aggregate --metrics`")
    hl.add_argument("--out", type=Path, required=True, metavar="DIR")
    cp = sub.add_parser("compare", help="did a rerun reproduce a result set? per grid point, "
                        "in seed standard deviations")
    sets = ("a runs.csv, a study tables dir, a results dir (studies/<study>/runs.csv), or "
            "git:REV[:PATH] (the committed results at REV)")
    cp.add_argument("set_a", metavar="A", help=f"the reference: {sets}")
    cp.add_argument("set_b", metavar="B", nargs="?",
                    help="the rerun, as A (default: the working tree's results/)")
    cp.add_argument("--sigma", type=float, default=2.0, metavar="K",
                    help="a grid point is outside when its top-1 differs by more than K seed "
                         "stds (default 2)")
    cp.add_argument("--max-outside", type=int, metavar="N",
                    help="exit 1 when more than N grid points of a study are outside "
                         "(default: as many as a faithful rerun with fresh seeds exceeds "
                         "only 1%% of the time); a study whose top-1 differences lean one "
                         "way (sign test p < 0.001) also exits 1")
    cp.add_argument("--study", action="append", metavar="NAME",
                    help="compare only this study (repeatable; default: all in both sets)")
    cp.add_argument("--rows", type=int, default=10, metavar="N",
                    help="grid points shown per study, largest |diff|/sigma first, besides "
                         "all outside (0: all; default 10)")
    cp.add_argument("--json", type=Path, metavar="FILE", help="also write the result as JSON")


def run_analysis(args: argparse.Namespace) -> int:
    """Run an analysis command; its exit status (compare: 1 when a study is not reproduced)."""
    if args.command == "compare":
        return _compare(args)
    if args.command == "aggregate":
        _aggregate(args)
    elif args.command == "plot":
        from prunebench.analysis.aggregate import read_tables
        from prunebench.analysis.plots import write_plots

        runs, summary = read_tables(args.tables)
        for path in write_plots(runs, summary, args.out, figures=args.figures):
            print(path)
    elif args.command == "report":
        from prunebench.analysis.report import CHECKLIST_NAME, write_report

        print(write_report(args.tables, args.plots, args.out, args.checklist))
        print(args.checklist or args.out.parent / CHECKLIST_NAME)
    elif args.command == "headline":
        from prunebench.analysis.aggregate import write_headline_dir

        for path in write_headline_dir(args.metrics, args.out):
            print(path)
    else:
        raise ValueError(f"not an analysis command: {args.command!r}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from prunebench.analysis.compare import compare, read_result_sets, render, write_json

    if args.rows < 0:
        raise ConfigError(f"--rows must be >= 0, got {args.rows}")
    set_a, set_b = read_result_sets(args.set_a, args.set_b)
    result = compare(set_a, set_b, args.sigma, args.max_outside, args.study)
    if args.json is not None:
        write_json(result, args.json)
    print(render(result, args.rows), end="")
    return 0 if result["reproduced"] else 1


def _aggregate(args: argparse.Namespace) -> None:
    from prunebench.analysis.aggregate import (
        collect_runs,
        read_manifest_list,
        summarise,
        write_headline,
        write_tables,
    )

    manifests = list(args.manifests)
    if args.manifest_list is not None:
        manifests += read_manifest_list(args.manifest_list)
    if not manifests:
        raise ConfigError("aggregate needs at least one MANIFEST or --manifest-list FILE")
    runs = collect_runs(manifests)
    summary = summarise(runs)
    written = write_tables(runs, summary, args.out)
    if args.metrics is not None:
        written.append(write_headline(summary, args.metrics))
    for path in written:
        print(path)
