"""How long `prunebench plan` takes on the repository's params, at two commits, interleaved.

Planning runs in the Snakemake process before any job starts, and again in every job that
selects its runs, so it must not get slower when planning is separated from execution. For
each commit this checks the tree out into a temporary `git worktree` and times

    python -m prunebench.cli plan --params <this repository's params.yaml> --set scale=<s>

as a whole process (what a user waits for: imports, parsing, planning, printing), with the
commits alternating within each repeat so that drifts of a shared machine hit both alike. It
also checks that both commits print the same jobs (names, hashes and run directories), and
writes every time, the medians and their ratio as JSON.

    python benchmarks/plan_time.py --baseline 9fd3160 --current HEAD --repeats 9 \\
        --out benchmarks/results/plan_time.json

9fd3160 is the last commit before issue #21 (planning apart from running).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _stats import spread

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "plan_time.json"


def checkout(commit: str, dest: Path) -> str:
    """`commit` as a detached worktree at `dest`; its full hash."""
    subprocess.run(["git", "worktree", "add", "--detach", str(dest), commit], cwd=ROOT,
                   check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, check=True, text=True,
                          capture_output=True).stdout.strip()


def plan_once(src: Path, params: Path, scale: str) -> tuple[float, list[dict]]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "prunebench.cli", "plan", "--params",
                          str(params), "--set", f"scale={scale}"], env=env, check=True,
                         text=True, capture_output=True, cwd=ROOT).stdout
    seconds = time.perf_counter() - start
    return seconds, [json.loads(line) for line in out.splitlines()]


def names(jobs: list[dict]) -> list[tuple]:
    return sorted((j["stage"], j["study"], j["label"], j["point"], j["hash"], tuple(j["runs"]))
                  for j in jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="9fd3160")
    parser.add_argument("--current", default="HEAD")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--scale", default="all")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        try:
            for role, commit in (("baseline", args.baseline), ("current", args.current)):
                trees[role] = (Path(tmp) / role, checkout(commit, Path(tmp) / role))
            times: dict[str, list[float]] = {role: [] for role in trees}
            plans = {}
            plan_once(trees["baseline"][0] / "src", args.params, args.scale)  # warm caches
            for repeat in range(args.repeats):
                order = list(trees) if repeat % 2 == 0 else list(reversed(trees))
                for role in order:
                    seconds, jobs = plan_once(trees[role][0] / "src", args.params, args.scale)
                    times[role].append(seconds)
                    plans[role] = jobs
        finally:
            for path, _ in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT,
                               capture_output=True)
    same = names(plans["baseline"]) == names(plans["current"])
    record = {
        "what": "wall time of `python -m prunebench.cli plan` (whole process), interleaved",
        "params": str(args.params.relative_to(ROOT) if args.params.is_relative_to(ROOT)
                      else args.params),
        "scale": args.scale,
        "jobs": len(plans["current"]),
        "same_jobs_and_runs": same,
        "commits": {role: commit for role, (_, commit) in trees.items()},
        "seconds": times,
        "summary": {role: spread(values) for role, values in times.items()},
        "current_over_baseline": (spread(times["current"])["median"]
                                  / spread(times["baseline"])["median"]),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(record, indent=2) + "\n")
    tmp_out.replace(args.out)
    print(json.dumps({k: record[k] for k in ("jobs", "same_jobs_and_runs",
                                             "current_over_baseline")}))
    print(json.dumps(record["summary"], indent=2))


if __name__ == "__main__":
    main()
