"""Command-line interface: `prunebench train | prune | finetune | lottery | sensitivity | evaluate`.

Every command reads a study from the params file (plus `--set key=value` overrides),
validates it and loads the data before writing anything, then runs the requested grid points
into hash-named run directories (finished ones are reused) and prints one JSON line per run.
Bad input prints a one-line error naming the key and what is allowed, and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from prunebench.errors import ConfigError
from prunebench.io import atomic_write_json

EXIT_BAD_INPUT = 2


def _common(p: argparse.ArgumentParser, grid: bool = True) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--study", help="study name in the params file (needed if it has several)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--runs-root", help="where run directories go (default: params runs_root)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--seed", type=int, nargs="+", help="seeds (default: the study's)")
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch (default: torch's; set it to the job's share of "
                        "cores, or parallel jobs oversubscribe the CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--manifest", type=Path,
                   help="also write a JSON manifest of the finished runs here (used by the workflow)")
    if grid:
        p.add_argument("--method", required=True, help="method label in the study")
        p.add_argument("--sparsity", type=float, nargs="+",
                       help="target weight sparsities in [0, 1) (default: the study's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunebench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _common(sub.add_parser("train", help="train the dense model(s)"), grid=False)
    _common(sub.add_parser("prune", help="prune trained (or initial) weights in one shot"))
    _common(sub.add_parser("finetune", help="prune, then retrain with the mask fixed"))
    _common(sub.add_parser("lottery", help="lottery-ticket iterative pruning with rewinding"))
    sens = sub.add_parser("sensitivity", help="per-layer sensitivity curves of the dense model(s)")
    _common(sens, grid=False)
    sens.add_argument("--method", help="a `sensitivity` method label whose sweep to use "
                      "(default: the study's, if its sensitivity methods share one sweep)")
    ev = sub.add_parser("evaluate", help="evaluate a finished run's model on test and validation")
    ev.add_argument("run", type=Path, help="a run directory (holding config.json and model.pt)")
    ev.add_argument("--device", default="auto")
    data = sub.add_parser("data", help="fetch/verify a study's dataset (mirror or download)")
    _common(data, grid=False)
    sub.add_parser("schema", help="print the JSON Schema of the params file")
    pl = sub.add_parser("plan", help="print the jobs the params file asks for (JSON lines)")
    pl.add_argument("--params", default="params.yaml")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a top-level key, e.g. --set scale=all")
    from prunebench.analysis.cli import add_subcommands

    add_subcommands(sub)
    return parser


def _workspace(args):
    from prunebench.config import load_study, read_params
    from prunebench.runs import Workspace

    study = load_study(args.params, args.study, args.overrides)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    runs_root = args.runs_root or read_params(args.params).get("runs_root", "results/runs")
    ws = Workspace(study, runs_root, args.device, progress=False if args.no_progress else None)
    seeds = args.seed if args.seed is not None else study.seeds
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seed must be >= 0, got {seeds}")
    ws.data  # noqa: B018  (load now: a missing data file must fail before any run writes)
    return ws, seeds


def _grid(args, ws, allowed_when: Sequence[str]):
    from prunebench.pruning import METHODS, check_sparsity

    entry = ws.study.method(args.method)
    when = METHODS.get(entry.method).when
    if when not in allowed_when:
        raise ConfigError(
            f"method {args.method!r} ({entry.method}, applied '{when}') runs with "
            f"`prunebench {COMMAND_FOR[when]}`, not `{args.command}`"
        )
    sparsities = args.sparsity if args.sparsity is not None else ws.sparsities(entry)
    return entry, [check_sparsity(s, "--sparsity") for s in sparsities]


COMMAND_FOR = {"trained": "finetune", "init": "finetune", "iterative": "lottery",
               "during_training": "finetune"}


def _sensitivity_sweep(args, ws) -> tuple[float, ...]:
    """The sweep of the `--method` entry, else the one sweep of the study's sensitivity
    methods, else the method's default."""
    from prunebench.pruning import METHODS

    if args.method is not None:
        entry = ws.study.method(args.method)
        if entry.method != "sensitivity":
            raise ConfigError(f"--method {args.method!r} is method {entry.method!r}, not 'sensitivity'")
        return tuple(entry.options["sweep"])
    sweeps = {tuple(e.options["sweep"]) for e in ws.study.methods if e.method == "sensitivity"}
    if len(sweeps) > 1:
        labels = [e.label for e in ws.study.methods if e.method == "sensitivity"]
        raise ConfigError(f"the study's sensitivity methods differ in sweep: --method is "
                          f"required; allowed: {', '.join(labels)}")
    return sweeps.pop() if sweeps else tuple(METHODS.get("sensitivity").defaults["sweep"])


def _summary(run) -> dict:
    meta = {k: v for k, v in run.meta.items() if k != "data"}
    m = run.metrics()
    headline = {k: m[k] for k in ("top1", "top5", "weight_sparsity") if k in m}
    return {"kind": run.kind, "path": str(run.path), **meta, **headline}


def run_command(args) -> None:
    if args.command == "schema":
        from prunebench.config import json_schema

        print(json.dumps(json_schema(), indent=2))
        return
    if args.command == "plan":
        from prunebench.config import apply_overrides, read_params
        from prunebench.plan import plan

        for job in plan(apply_overrides(read_params(args.params), args.overrides)):
            print(json.dumps({**job.wildcards, "manifest": job.manifest, "inputs": job.inputs,
                              "runs": job.runs}))
        return
    from prunebench.analysis.cli import COMMANDS, run_analysis

    if args.command in COMMANDS:
        run_analysis(args)
        return
    if args.command == "evaluate":
        from prunebench.runs import evaluate_run_dir

        print(json.dumps(evaluate_run_dir(args.run, args.device)))
        return
    ws, seeds = _workspace(args)
    if args.command == "data":
        d = ws.data
        summary = {"study": ws.study.name, "dataset": d.name, "num_classes": d.num_classes,
                   "input_shape": list(d.input_shape), "train": len(d.train_y),
                   "val": len(d.val_y), "test": len(d.test_y)}
        print(json.dumps(summary))
        if args.manifest is not None:
            atomic_write_json(args.manifest, summary)
        return
    runs = list(_run_grid(args, ws, seeds))
    if args.manifest is not None:
        atomic_write_json(args.manifest, {"command": args.command, "study": ws.study.name,
                                          "runs": [_summary(r) for r in runs]})


def _run_grid(args, ws, seeds):
    """Run the requested grid points in order, printing one JSON line per finished run."""
    for run in _grid_runs(args, ws, seeds):
        print(json.dumps(_summary(run)), flush=True)
        yield run


def _grid_runs(args, ws, seeds):
    if args.command == "train":
        for seed in seeds:
            yield ws.run_train(seed)
        return
    if args.command == "sensitivity":
        sweep = _sensitivity_sweep(args, ws)
        for seed in seeds:
            yield ws.run_sensitivity(seed, sweep)
        return
    allowed = {"prune": ("trained", "init"), "finetune": ("trained", "init", "during_training"),
               "lottery": ("iterative",)}[args.command]
    entry, sparsities = _grid(args, ws, allowed)
    for seed in seeds:
        for sparsity in sparsities:
            if args.command == "prune":
                yield ws.run_prune(entry, sparsity, seed)
            elif args.command == "finetune":
                yield ws.run_finetune(entry, sparsity, seed)
            else:
                yield from ws.run_lottery(entry, sparsity, seed)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    try:
        run_command(args)
    except ConfigError as err:
        print(f"prunebench: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
