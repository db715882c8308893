"""Command-line interface: one verb per stage (`prunebench train | sensitivity | prune |
finetune | distill | rewind | lottery`), plus `evaluate`, `data`, `plan`, `schema`, `docs`
(the documentation's generated reference pages) and the analysis, and `export` (a finished
run's model as one ONNX, TorchScript or torch.export file, `prunebench.export`).

Every stage verb reads a study from the params file (plus `--set key=value` overrides),
validates it and loads the data before writing anything, then makes the requested runs of
that stage (their parent runs first) in hash-named run directories (finished ones are
reused) and prints one JSON line per run.
Bad input prints a one-line error naming the key and what is allowed, and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from prunebench.errors import ConfigError
from prunebench.io import atomic_write_json

EXIT_BAD_INPUT = 2
STATES_HELP = """states of a run (prunebench.status):
  ok          finished, every file matches its checksum, made by today's source
  stale       finished, but the source that decides its result has changed since
  damaged     a file no longer matches its checksum, or is gone
  missing     its job finished, but the run directory is gone
  downstream  in order itself, but made from a stale, damaged or missing run
  unrecorded  made before runs recorded their source (cannot be checked)
  pending     not made yet
`rerun` redoes stale, damaged and missing runs, what is made from them, and the runs they
train with as one stack (a stack is retrained whole, so its bits stay the same)."""


def _common(p: argparse.ArgumentParser, grid: bool = True) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--study", help="study name in the params file (needed if it has several)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--runs-root", help="where run directories go (default: params runs_root)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--seed", type=int, nargs="+", help="seeds (default: the study's)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads, the same as --set threads=N (default: the study's "
                        "`threads`, 1); part of every run's name, since results depend on it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--manifest", type=Path,
                   help="also write a JSON manifest of the finished runs here (used by the workflow)")
    if grid:
        p.add_argument("--method", help="method label in the study (default: every label of "
                       "the stage; `train`: dense)")
        p.add_argument("--sparsity", type=float, nargs="+",
                       help="targets in [0, 1): weight sparsities, or channel sparsities for "
                            "structured methods (default: the study's)")
        p.add_argument("--job", metavar="HASH",
                       help="only the runs of one planned job (`prunebench plan` lists them; "
                            "the workflow runs one job per grid point)")


def build_parser() -> argparse.ArgumentParser:
    from prunebench.stages import STAGES

    parser = argparse.ArgumentParser(prog="prunebench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES.values():
        p = sub.add_parser(stage.name, help=stage.help)
        _common(p)
    ev = sub.add_parser("evaluate", help="evaluate a finished run's model on test and validation")
    ev.add_argument("run", type=Path, help="a run directory (holding config.json and model.pt)")
    ev.add_argument("--device", default="auto")
    xp = sub.add_parser("export", help="write a finished run's model as one standalone file "
                        "(ONNX, TorchScript or torch.export's program)")
    xp.add_argument("run", type=Path,
                    help="a finished run directory (results/runs/<kind>/<hash>)")
    xp.add_argument("--format", default="onnx", metavar="FORMAT",
                    help="onnx (default; needs the `export` extra), torchscript or "
                         "exported_program (.pt2)")
    xp.add_argument("--out", type=Path, help="the file to write (default: "
                    "RUN/export/model.<onnx|pt|pt2>; a directory gets model.<ext> inside)")
    data = sub.add_parser("data", help="fetch/verify a study's dataset (mirror or download)")
    _common(data, grid=False)
    sub.add_parser("schema", help="print the JSON Schema of the params file")
    dc = sub.add_parser("docs", help="print a reference page of the documentation, generated "
                        "from the code (Markdown; the MkDocs build makes the same pages)")
    dc.add_argument("page", choices=("methods", "options"),
                    help="methods: every method and its options; options: every params key")
    pl = sub.add_parser("plan", help="print the jobs the params file asks for (JSON lines)")
    pl.add_argument("--params", default="params.yaml")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a top-level key, e.g. --set scale=all")
    for name, text in (("status", "which planned runs are ok, stale (made by older source), "
                                  "damaged, missing, or made from one of those"),
                       ("rerun", "redo the stale, damaged and missing runs and what is made "
                                 "from them, then run Snakemake (its options after `--`)")):
        st = sub.add_parser(name, help=text, description=text, epilog=STATES_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        st.add_argument("--params", default="params.yaml")
        st.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a top-level key, e.g. --set "
                        "scale=all or --set only=mnist_lenet300 (`rerun` passes scale, only, "
                        "runs_root and gpus_per_job on to Snakemake's --config)")
        st.add_argument("--unrecorded", action="store_true",
                        help="count runs made before runs recorded their source among those "
                        "to redo")
        if name == "status":
            st.add_argument("--json", action="store_true", help="one JSON line per run")
            st.add_argument("--check", action="store_true",
                            help="exit 1 when a run is stale, damaged or missing")
        else:
            st.add_argument("--dry-run", action="store_true",
                            help="list what would be redone; remove and run nothing")
            st.add_argument("snakemake_args", nargs=argparse.REMAINDER,
                            help="Snakemake's options, after `--` (default: --cores all)")
    from prunebench.analysis.cli import add_subcommands

    add_subcommands(sub)
    return parser


def _context(args):
    """The study's planning context (no device, no data) and the seeds asked for."""
    from prunebench.config import read_params
    from prunebench.context import StudyContext
    from prunebench.study import load_study

    overrides = list(args.overrides)
    if args.threads is not None:
        overrides.append(f"threads={args.threads}")
    study = load_study(args.params, args.study, overrides)
    from prunebench.determinism import ensure

    ensure(study.determinism, f"studies.{study.name}.determinism")  # before any torch op
    import torch

    torch.set_num_threads(study.threads)
    runs_root = args.runs_root or read_params(args.params).get("runs_root", "results/runs")
    seeds = args.seed if args.seed is not None else study.seeds
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seed must be >= 0, got {seeds}")
    return StudyContext(study, Path(runs_root)), seeds


def select_runs(stage, ctx, label: str | None, seeds, targets) -> list:
    """The stage's runs for one method label (all labels if None), seeds and targets
    (weight or channel sparsities); an empty selection names what is allowed."""
    from prunebench.stages import STAGES
    from prunebench.study import check_fraction

    targets = None if targets is None else [check_fraction(t, "--sparsity") for t in targets]
    if seeds != list(ctx.study.seeds):
        ctx = ctx.with_seeds(seeds)
    runs = stage.runs(ctx)
    labels = sorted({r.label for r in runs})
    if label is not None:
        if label != "dense":
            ctx.study.method(label)  # an unknown label names the study's methods
        runs = [r for r in runs if r.label == label]
        if not runs:
            owners = [s.name for s in STAGES.values()
                      if any(r.label == label for r in s.runs(ctx))]
            raise ConfigError(
                f"method {label!r} has no `{stage.name}` runs in study {ctx.study.name!r}; "
                f"its runs are made by: {', '.join(f'prunebench {o}' for o in owners) or 'none'}"
                f" (labels with {stage.name} runs: {', '.join(labels) or 'none'})")
    if targets is not None:
        runs = [r for r in runs if r.spec.target in targets]
        if not runs:
            raise ConfigError(f"--sparsity {targets} matches no {stage.name} run of "
                              f"{label or 'the study'}")
    return runs


def select_job(stage, runs: list, job: str) -> list:
    """The runs of the planned job whose hash is `job`."""
    from prunebench.plan import group_runs

    groups = group_runs(stage, runs)
    for _, h, members in groups:
        if h == job:
            return members
    raise ConfigError(
        f"--job {job!r} is not a {stage.name} job of this selection; the params ask for: "
        f"{', '.join(h for _, h, _ in groups) or 'none'} (see `prunebench plan`)")


def _summary(run) -> dict:
    meta = {k: v for k, v in run.meta.items() if k != "data"}
    m = run.metrics()
    headline = {k: m[k] for k in ("top1", "top5", "weight_sparsity", "param_reduction",
                                  "macs_reduction") if k in m}
    return {"kind": run.kind, "path": str(run.path), **meta, **headline}


def _status_command(args) -> int:
    from prunebench import status
    from prunebench.config import apply_overrides, read_params

    raw = apply_overrides(read_params(args.params), args.overrides)
    if args.command == "rerun":
        extra = list(args.snakemake_args)
        if extra[:1] == ["--"]:
            extra = extra[1:]
        selection = [o for o in args.overrides
                     if o.split("=", 1)[0] in ("scale", "only", "runs_root", "gpus_per_job")]
        if selection:
            extra = [*(extra or ["--cores", "all"]), "--config", *selection]
        return status.rerun(raw, extra, unrecorded=args.unrecorded, dry_run=args.dry_run)
    states = status.survey(raw)
    try:
        if args.json:
            for line in status.as_json(states):
                print(line)
        else:
            print(status.format_report(states, args.unrecorded))
        sys.stdout.flush()
    except BrokenPipeError:  # `prunebench status | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    bad = any(s.state in status.REDO for s in states)
    return 1 if args.check and bad else 0


def run_command(args) -> int | None:
    from prunebench.stages import STAGES

    if args.command == "schema":
        from prunebench.study import json_schema

        print(json.dumps(json_schema(), indent=2))
        return
    if args.command == "docs":
        from prunebench.docs import PAGES

        print(PAGES[args.page][1](), end="")
        return
    if args.command == "plan":
        from prunebench.config import apply_overrides, read_params
        from prunebench.plan import plan

        for job in plan(apply_overrides(read_params(args.params), args.overrides)):
            print(json.dumps({**job.wildcards, "manifest": job.manifest, "inputs": job.inputs,
                              "runs": job.runs}))
        return
    if args.command in ("status", "rerun"):
        return _status_command(args)
    from prunebench.analysis.cli import COMMANDS, run_analysis

    if args.command in COMMANDS:
        return run_analysis(args)  # compare exits 1 when a study is not reproduced
    if args.command == "export":
        from prunebench.export import export_run

        print(json.dumps(export_run(args.run, args.format, args.out)))
        return
    if args.command == "evaluate":
        from prunebench.executor import evaluate_run_dir

        print(json.dumps(evaluate_run_dir(args.run, args.device)))
        return
    from prunebench.executor import Executor

    ctx, seeds = _context(args)
    if args.command == "data":
        d = Executor(ctx, "cpu").data  # fetch and verify: no GPU needed
        summary = {"study": ctx.study.name, "dataset": d.name, "num_classes": d.num_classes,
                   "input_shape": list(d.input_shape), "train": len(d.train_y),
                   "val": len(d.val_y), "test": len(d.test_y)}
        print(json.dumps(summary))
        if args.manifest is not None:
            atomic_write_json(args.manifest, summary)
        return
    stage = STAGES[args.command]
    label = args.method if args.method is not None else stage.default_label
    runs = select_runs(stage, ctx, label, list(seeds), args.sparsity)
    if args.job is not None:
        runs = select_job(stage, runs, args.job)
    from prunebench.stacking import stacks

    stacked = stacks(stage, ctx, stage.runs(ctx))  # the plan's stacks, whatever the selection
    ex = Executor(ctx, args.device, progress=False if args.no_progress else None)
    ex.data  # noqa: B018  (load now: a missing data file must fail before any run writes)
    for run in runs:
        if run.path in stacked:
            ex.ensure_stack(stacked[run.path])
        else:
            ex.ensure(run)
        print(json.dumps(_summary(run)), flush=True)
    if args.manifest is not None:
        atomic_write_json(args.manifest, {
            "command": args.command, "study": ctx.study.name, "job": args.job,
            "runs": [_summary(r) for r in runs],
            # Time inside this command, so granularity can tell start-up from work.
            "work_s": round(time.perf_counter() - args.started, 3),
            "launcher": os.environ.get("PRUNEBENCH_LAUNCHER", "direct")})


def main(argv: Sequence[str] | None = None) -> int:
    from prunebench.errors import StorageFullError

    args = build_parser().parse_args(argv)  # imports the stages, and so torch
    args.started = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    try:
        status = run_command(args)
    except ConfigError as err:
        print(f"prunebench: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StorageFullError as err:  # disk, quota or file size limit: nothing half-written
        print(f"prunebench: error: {err}", file=sys.stderr)
        return 1
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
