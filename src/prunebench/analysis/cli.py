"""CLI subcommands of the analysis stage (aggregate, plot, report).

This module is imported to build the `prunebench` parser for every command, so pandas and
matplotlib are imported only when an analysis command actually runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prunebench.errors import ConfigError

COMMANDS: tuple[str, ...] = ("aggregate", "plot", "report", "headline")


def add_subcommands(sub) -> None:
    """Add the analysis subcommands to the `prunebench` parser."""
    ag = sub.add_parser("aggregate", help="collect finished runs into runs.csv, summary.csv/.md")
    ag.add_argument("manifests", nargs="*", type=Path, metavar="MANIFEST",
                    help="job manifests written by train/finetune/distill/lottery "
                         "--manifest")
    ag.add_argument("--manifest-list", type=Path, metavar="FILE",
                    help="a file listing more manifests, one path per line")
    ag.add_argument("--out", type=Path, required=True, metavar="DIR", help="tables directory")
    ag.add_argument("--metrics", type=Path, metavar="FILE",
                    help="also write the headline top-1 metrics (JSON, for DVC) here")
    pl = sub.add_parser("plot", help="draw the per-study figures from the tables")
    pl.add_argument("--tables", type=Path, required=True, metavar="DIR")
    pl.add_argument("--out", type=Path, required=True, metavar="DIR", help="plots directory")
    rp = sub.add_parser("report", help="write the markdown report from tables and figures")
    rp.add_argument("--tables", type=Path, required=True, metavar="DIR")
    rp.add_argument("--plots", type=Path, required=True, metavar="DIR")
    rp.add_argument("--out", type=Path, required=True, metavar="FILE", help="report.md path")
    hl = sub.add_parser("headline", help="a study's headline: one small JSON file per method "
                        "(for `dvc metrics show`)")
    hl.add_argument("metrics", nargs="+", type=Path, metavar="FILE",
                    help="the study's metrics.json written by `aggregate --metrics`")
    hl.add_argument("--out", type=Path, required=True, metavar="DIR")


def run_analysis(args: argparse.Namespace) -> None:
    if args.command == "aggregate":
        _aggregate(args)
    elif args.command == "plot":
        from prunebench.analysis.aggregate import read_tables
        from prunebench.analysis.plots import write_plots

        runs, summary = read_tables(args.tables)
        for path in write_plots(runs, summary, args.out):
            print(path)
    elif args.command == "report":
        from prunebench.analysis.report import write_report

        print(write_report(args.tables, args.plots, args.out))
    elif args.command == "headline":
        from prunebench.analysis.aggregate import write_headline_dir

        for path in write_headline_dir(args.metrics, args.out):
            print(path)
    else:
        raise ValueError(f"not an analysis command: {args.command!r}")


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
