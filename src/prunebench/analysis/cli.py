"""CLI subcommands of the analysis stage (aggregate, plot, report, page, pages, headline,
compare).

This module is imported to build the `prunebench` parser for every command, so pandas and
matplotlib are imported only when an analysis command actually runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prunebench.errors import ConfigError

from prunebench.analysis.names import plot_names  # noqa: E402 (plain Python, cheap)

COMMANDS: tuple[str, ...] = ("aggregate", "plot", "report", "page", "pages", "headline",
                              "compare")


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
                    help="draw only these figures; one whose data the tables lack is an "
                         "error (default: every figure the tables can fill)")
    rp = sub.add_parser("report", help="write the markdown report from tables and figures")
    rp.add_argument("--tables", type=Path, required=True, metavar="DIR")
    rp.add_argument("--plots", type=Path, required=True, metavar="DIR")
    rp.add_argument("--out", type=Path, required=True, metavar="FILE", help="report.md path")
    rp.add_argument("--checklist", type=Path, metavar="FILE",
                    help="where to write the reporting checklist as JSON (default: "
                         "checklist.json beside the report)")
    pg = sub.add_parser("page", help="write a study's results page for the docs")
    pg.add_argument("--tables", type=Path, required=True, metavar="DIR")
    pg.add_argument("--plots", type=Path, required=True, metavar="DIR")
    pg.add_argument("--study", required=True, metavar="NAME")
    pg.add_argument("--out", type=Path, required=True, metavar="FILE",
                    help="the page, e.g. docs/results/<study>.md")
    pg.add_argument("--granularity", type=Path, metavar="FILE",
                    help="the study's granularity.json: the command and wall time that made it")
    pg.add_argument("--params", type=Path, metavar="FILE",
                    help="params.yaml: the papers the study declares (studies.<s>.papers)")
    pg.add_argument("--docs-plots", type=Path, metavar="DIR",
                    help="the directory through which the docs reach the figures (default: "
                         "plots/ beside the page's directory)")
    ps = sub.add_parser("pages", help="write the results index of the docs and the README's "
                        "block of headline numbers from every study's tables")
    ps.add_argument("--studies", type=Path, default=Path("results/studies"), metavar="DIR")
    ps.add_argument("--out", type=Path, default=Path("docs/results"), metavar="DIR",
                    help="where the study pages are; the index is written there")
    ps.add_argument("--readme", type=Path, metavar="FILE",
                    help="also replace this file's block between <!-- results:begin --> and "
                         "<!-- results:end -->")
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
    elif args.command == "page":
        from prunebench.analysis.pages import write_page

        papers = ()
        if args.params is not None:
            from prunebench.study import load_study

            papers = load_study(args.params, args.study).papers
        print(write_page(args.tables, args.plots, args.out, args.study, args.granularity,
                         papers, args.docs_plots))
    elif args.command == "pages":
        from prunebench.analysis.pages import BEGIN, update_readme, write_index

        print(write_index(args.studies, args.out))
        if args.readme is not None:
            if not args.readme.is_file() or BEGIN not in args.readme.read_text():
                print(f"{args.readme}: no {BEGIN} block; left alone")
            else:
                changed = update_readme(args.readme, args.studies, args.out)
                print(f"{args.readme}: {'updated' if changed else 'already current'}")
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
