"""Share of the workflow's job wall time that is overhead: starting a process, importing
prunebench, reaching the job server, rather than the job's own work.

Every stage job writes, in its manifest, `work_s`: the seconds spent in the command after
its imports. Its overhead is its `benchmark:` wall time minus that. Jobs without a manifest
(download, aggregate, plot, report) are counted with the median overhead of those with one,
as they are launched the same way. The result says how the jobs were launched (forked from
the local job server, or each a fresh process) and compares the share with the 15 % target.
A high share means the jobs are too small for how they are launched.

It also records how the study was made, for its results page: the command that ran the
workflow (`PRUNEBENCH_COMMAND`, which the Snakefile sets) and the elapsed wall time from the
first stage job's start to the last one's end (each job's `benchmark:` file is written when
it ends, so its modification time less its `s` is when it started).

    python workflow/scripts/granularity.py BENCHMARK.tsv ... [--jobs results/jobs]
        [--root results/benchmarks] [--out results/granularity.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
from collections import Counter
from pathlib import Path

from prunebench.io import atomic_write_json, read_json

TARGET_SHARE = 0.15


def wall_seconds(tsv: Path) -> float:
    with open(tsv, newline="") as fh:
        return float(next(csv.DictReader(fh, delimiter="\t"))["s"])


def stage_of(tsv: Path, root: Path) -> str:
    """results/benchmarks/<study>/<stage>/... -> stage; <study>/download.tsv, <rule>.tsv -> rule."""
    parts = tsv.relative_to(root).parts
    return Path(parts[-1]).stem if len(parts) <= 2 else parts[1]


def manifest_of(tsv: Path, root: Path, jobs: Path) -> dict | None:
    path = (jobs / tsv.relative_to(root)).with_suffix(".json")
    return read_json(path) if path.is_file() else None


COMMAND_ENV = "PRUNEBENCH_COMMAND"


def granularity(tsvs: list[Path], root: Path, jobs: Path) -> dict:
    rows = []  # (stage, wall, overhead or None, launcher)
    spans = []  # (start, end) of the stage jobs: those with a manifest
    for tsv in tsvs:
        wall = wall_seconds(tsv)
        manifest = manifest_of(tsv, root, jobs)
        if manifest is not None:
            end = tsv.stat().st_mtime
            spans.append((end - wall, end))
        if manifest is not None and "work_s" in manifest:
            rows.append((stage_of(tsv, root), wall, max(wall - manifest["work_s"], 0.0),
                         manifest.get("launcher", "direct")))
        else:
            rows.append((stage_of(tsv, root), wall, None, None))
    measured = [o for _, _, o, _ in rows if o is not None]
    if not measured:
        raise SystemExit("no job manifest records work_s: nothing to measure")
    typical = statistics.median(measured)
    by_stage: dict[str, dict] = {}
    total_wall = total_overhead = 0.0
    for stage, wall, overhead, _ in rows:
        overhead = typical if overhead is None else overhead
        entry = by_stage.setdefault(stage, {"jobs": 0, "job_wall_s": 0.0, "overhead_s": 0.0})
        entry["jobs"] += 1
        entry["job_wall_s"] += wall
        entry["overhead_s"] += overhead
        total_wall += wall
        total_overhead += overhead
    for entry in by_stage.values():
        entry["startup_share"] = round(entry["overhead_s"] / entry["job_wall_s"], 4)
        entry["job_wall_s"] = round(entry["job_wall_s"], 3)
        entry["overhead_s"] = round(entry["overhead_s"], 3)
    return {
        "jobs": len(rows),
        "launchers": dict(Counter(launcher for *_, launcher in rows if launcher)),
        "startup_s_per_job": round(typical, 3),
        "startup_s_total": round(total_overhead, 3),
        "job_wall_s_total": round(total_wall, 3),
        "startup_share": round(total_overhead / total_wall, 4) if total_wall else None,
        "target_share": TARGET_SHARE,
        "by_stage": dict(sorted(by_stage.items())),
        "method": "job wall time (benchmark: files) minus the work_s its manifest records",
        "stage_jobs": len(spans),
        "elapsed_s": (round(max(e for _, e in spans) - min(s for s, _ in spans), 1)
                      if spans else None),
        "elapsed_method": "first stage job's start to the last one's end, from the "
                          "benchmark: files' modification times less their wall time",
        "command": os.environ.get(COMMAND_ENV),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmarks", nargs="*", type=Path,
                        help="benchmark TSVs (default: every one under --root but this rule's)")
    parser.add_argument("--root", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--jobs", type=Path, default=Path("results/jobs"),
                        help="where the job manifests are, in the same layout as --root")
    parser.add_argument("--out", type=Path, default=Path("results/granularity.json"))
    args = parser.parse_args(argv)
    tsvs = args.benchmarks or sorted(
        p for p in args.root.rglob("*.tsv") if p.name != "granularity.tsv"
    )
    result = granularity(tsvs, args.root, args.jobs)
    atomic_write_json(args.out, result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
