"""A lottery-ticket study end to end, through the workflow, at two commits of prunebench.

The issue that brought stacked training asked how much faster a lottery-ticket run of
8 levels x 5 epochs at batch 64 became "end to end". This measures exactly that, the way a
user runs it: for each commit a fresh `git clone` of this repository, the same study added to
its params.yaml (LeNet-300-100 on MNIST, Adam 1.2e-3, batch 64, 5 epochs per training,
a quarter of the remaining weights pruned per round to 1 - 0.75^8 = 90 % sparsity: 8 levels,
each a target with its random-reinitialisation control: 17 trainings per seed), and

    snakemake --cores <N> --config only=lth_e2e

timed from start to the finished report: data copy from the mirror, dense training, the
lottery chain and its controls, the benchmark job of every result run, tables, figures.
The commits run interleaved (their order alternates per repeat), each repeat in a fresh
clone, and the JSON reports every wall time, the median ratio, where the time went (the
training seconds the runs record) and the test top-1 of every level at both commits, so
a speed-up that changed the results would show.

    python benchmarks/lottery_end_to_end.py --baseline 2e9a792 --current HEAD \\
        --mirror ../shared/data --out benchmarks/results/lottery_end_to_end.json

2e9a792 is the last commit before stacked training and the fused optimiser. Run it on a
quiet machine; it takes about 2 x repeats x (5-6 minutes per seed) on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from _stats import spread

STUDY = "lth_e2e"
FRACTION = 0.25
OUT = Path(__file__).parent / "results" / "lottery_end_to_end.json"


def study(levels: int, epochs: int, batch: int, seeds: list[int]) -> dict:
    return {
        "scale": "paper",
        "data": {"name": "mnist", "val_size": 5000},
        "model": {"name": "lenet_300_100"},
        "train": {"optimizer": "adam", "lr": 0.0012, "epochs": epochs, "batch_size": batch,
                  "schedule": "constant"},
        "methods": {"lottery": {"prune_fraction": FRACTION, "rewind_iteration": 0}},
        # Every level is a target, so every level has its control (as in the paper), and
        # the chains to the targets share their levels. 1 - 0.75^i is exact in binary, so
        # both commits share them (the baseline compared unrounded floats, and with 0.2 it
        # trained two levels twice: 1 - 0.8^2 is 0.3599999999999999 one way, 0.36 another).
        "sparsities": [1 - (1 - FRACTION) ** i for i in range(1, levels + 1)],
        "seeds": seeds,
    }


def clone(repo: Path, commit: str, where: Path, spec: dict) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(repo), str(where)], check=True)
    subprocess.run(["git", "-C", str(where), "checkout", "--quiet", commit], check=True)
    params = yaml.safe_load((where / "params.yaml").read_text())
    params["studies"][STUDY] = spec
    (where / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return where


def run_workflow(project: Path, cores: int, mirror: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(project / "src"),
           "PRUNEBENCH_DATA_MIRROR": str(Path(mirror).resolve()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = ["snakemake", "--cores", str(cores), "--config", f"only={STUDY}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"snakemake failed in {project}:\n{done.stderr[-4000:]}")
    return wall, done.stderr


def collect(project: Path) -> dict:
    """Training seconds and test top-1 of every run the study made."""
    runs = []
    for metrics in sorted((project / "results" / "runs").glob("*/*/metrics.json")):
        m = json.loads(metrics.read_text())
        runs.append({"kind": metrics.parent.parent.name, "run": metrics.parent.name,
                     "train_time_s": m.get("train_time_s"), "stack_members":
                     m.get("stack_members", 1)})
    table = project / "results" / "studies" / STUDY / "runs.csv"
    top1 = []
    with table.open() as f:
        for row in csv.DictReader(f):
            top1.append({k: row.get(k) for k in ("method", "control", "seed", "target_sparsity",
                                                 "weight_sparsity", "top1")})
    train_s = sum(r["train_time_s"] or 0 for r in runs)
    return {"train_time_s_total": round(train_s, 2), "runs": runs, "top1": top1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--baseline", default="2e9a792")
    ap.add_argument("--current", default="HEAD")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--levels", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--mirror", default=os.environ.get("PRUNEBENCH_DATA_MIRROR", "../shared/data"))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    commits = {}
    for name in ("baseline", "current"):
        ref = getattr(args, name)
        commits[name] = subprocess.run(["git", "-C", str(args.repo), "rev-parse", ref],
                                       check=True, capture_output=True, text=True).stdout.strip()
    spec = study(args.levels, args.epochs, args.batch_size, args.seeds)
    walls = {name: [] for name in commits}
    details = {}
    load = []
    scratch = Path(tempfile.mkdtemp(prefix="lth-e2e-"))
    try:
        for r in range(args.repeats):
            order = list(commits) if r % 2 == 0 else list(commits)[::-1]
            for name in order:
                project = clone(args.repo, commits[name], scratch / f"{name}-{r}", spec)
                load.append(os.getloadavg()[0])
                wall, _ = run_workflow(project, args.cores, args.mirror)
                walls[name].append(round(wall, 2))
                details.setdefault(name, []).append(collect(project))
                print(f"repeat {r + 1}/{args.repeats} {name} ({commits[name][:7]}): "
                      f"{wall:.1f} s end to end, "
                      f"{details[name][-1]['train_time_s_total']:.1f} s training", flush=True)
                shutil.rmtree(project)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ratios = [b / c for b, c in zip(walls["baseline"], walls["current"])]
    result = {
        "benchmark": "lottery_end_to_end",
        "command": f"snakemake --cores {args.cores} --config only={STUDY}",
        "study": spec, "levels": args.levels,
        "commits": commits, "repeats": args.repeats,
        "torch_threads_per_job": 1, "cores": args.cores, "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "torch": torch.__version__,
        "wall_s": walls,
        "speedup_current_over_baseline": {**spread(ratios), "per_repeat": ratios},
        "train_time_s_total": {n: [d["train_time_s_total"] for d in ds]
                               for n, ds in details.items()},
        "load_average_1min_before_each": load,
        "top1": {n: ds[0]["top1"] for n, ds in details.items()},
        "runs": {n: ds[0]["runs"] for n, ds in details.items()},
        "target": {"speedup_current_over_baseline": 4.0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(json.dumps({k: result[k] for k in ("wall_s", "speedup_current_over_baseline",
                                             "train_time_s_total")}, indent=2))


if __name__ == "__main__":
    main()
