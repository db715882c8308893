"""Share of the workflow's wall time spent starting processes and importing prunebench.

Every Snakemake job is one `prunebench` process, which pays for Python start-up and the
imports (torch, the registries) before doing any work. This measures that fixed cost once
(the median of a few `python -c "import prunebench.runs, prunebench.cli"`), multiplies it by
the number of jobs and divides by the jobs' summed wall time from their `benchmark:` files.
A high share means the jobs are too small: merge stages or make the study heavier.

    python workflow/scripts/granularity.py [BENCHMARK.tsv ...] [--out results/granularity.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from prunebench.io import atomic_write_json

IMPORTS = "import prunebench.runs, prunebench.cli"
TARGET_SHARE = 0.15


def startup_seconds(repeats: int) -> float:
    """Median wall time of a fresh interpreter importing what every job imports."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def wall_seconds(tsv: Path) -> float:
    with open(tsv, newline="") as fh:
        return float(next(csv.DictReader(fh, delimiter="\t"))["s"])


def stage_of(tsv: Path, root: Path) -> str:
    """results/benchmarks/<study>/<stage>/... -> stage; <study>/download.tsv, <rule>.tsv -> rule."""
    parts = tsv.relative_to(root).parts
    return Path(parts[-1]).stem if len(parts) <= 2 else parts[1]


def granularity(tsvs: list[Path], root: Path, repeats: int) -> dict:
    startup = startup_seconds(repeats)
    walls = {tsv: wall_seconds(tsv) for tsv in tsvs}
    total = sum(walls.values())
    by_stage: dict[str, dict] = {}
    for tsv, wall in walls.items():
        entry = by_stage.setdefault(stage_of(tsv, root), {"jobs": 0, "job_wall_s": 0.0})
        entry["jobs"] += 1
        entry["job_wall_s"] += wall
    for entry in by_stage.values():
        entry["startup_share"] = round(entry["jobs"] * startup / entry["job_wall_s"], 4)
        entry["job_wall_s"] = round(entry["job_wall_s"], 3)
    return {
        "jobs": len(walls),
        "startup_s_per_job": round(startup, 3),
        "startup_s_total": round(startup * len(walls), 3),
        "job_wall_s_total": round(total, 3),
        "startup_share": round(startup * len(walls) / total, 4) if total else None,
        "target_share": TARGET_SHARE,
        "by_stage": dict(sorted(by_stage.items())),
        "startup_command": f"{Path(sys.executable).name} -c {IMPORTS!r}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmarks", nargs="*", type=Path,
                        help="benchmark TSVs (default: every one under --root but this rule's)")
    parser.add_argument("--root", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--out", type=Path, default=Path("results/granularity.json"))
    parser.add_argument("--repeats", type=int, default=3, help="start-up measurements (median)")
    args = parser.parse_args(argv)
    tsvs = args.benchmarks or sorted(
        p for p in args.root.rglob("*.tsv") if p.name != "granularity.tsv"
    )
    result = granularity(tsvs, args.root, args.repeats)
    atomic_write_json(args.out, result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
