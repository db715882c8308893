"""Stacked against one-at-a-time recovery of one method's grid, through the real CLI.

In a checkout whose runs root already holds a study's finished runs (after a workflow run),
recover one method's grid points (every seed x sparsity) twice from the same pruned parents:
`stack.max_members: 1` (each run alone, as before stacking) and the study's stacking. Each
variant gets its own runs root, whose parent kinds (train, prune, ...) link to the project's
and whose `recover/` starts empty, so only the recovery is timed. The JSON reports both wall
times, their ratio, and how far the stacked runs' test top-1 and weights are from the runs
trained alone (the float-rounding difference, grown over the recipe's epochs).

    python benchmarks/stacked_workflow.py --study mnist_lenet300 --method global_magnitude

Writes benchmarks/results/stacked_workflow.json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

OUT = Path(__file__).parent / "results" / "stacked_workflow.json"


def _runs_root(project: Path, source: Path, name: str) -> Path:
    root = project / f".bench-{name}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    for kind in source.iterdir():
        if kind.is_dir() and kind.name != "recover":
            (root / kind.name).symlink_to(kind.resolve())
    return root


def _recover(project: Path, root: Path, args, max_members: int) -> tuple[float, list[dict]]:
    cmd = [sys.executable, "-m", "prunebench.cli", "finetune", "--params", "params.yaml",
           "--study", args.study, "--method", args.method, "--runs-root", root.name,
           "--set", f"stack.max_members={max_members}", "--no-progress"]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=project, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, [json.loads(line) for line in out.splitlines()]


def _same_weights(weights: dict, path: Path) -> bool | None:
    if not path.is_file():
        return None
    original = torch.load(path, weights_only=True)
    return all(torch.equal(weights[k], original[k]) for k in weights)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", type=Path, default=Path.cwd())
    p.add_argument("--runs-root", default="results/runs")
    p.add_argument("--study", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--max-members", type=int, default=8)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    project = args.project.resolve()
    source = project / args.runs_root
    result = {"study": args.study, "method": args.method, "threads": 1,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "load_average_before": os.getloadavg()}
    walls, runs = {}, {}
    for name, members in (("alone", 1), ("stacked", args.max_members)):
        root = _runs_root(project, source, name)
        try:
            walls[name], made = _recover(project, root, args, members)
            runs[name] = [{**r, "weights": torch.load(project / r["path"] / "model.pt",
                                                      weights_only=True),
                           "metrics": json.loads((project / r["path"] / "metrics.json")
                                                 .read_text())} for r in made]
        finally:
            shutil.rmtree(root, ignore_errors=True)
    pairs = []
    for alone, stacked in zip(runs["alone"], runs["stacked"]):
        assert Path(alone["path"]).name == Path(stacked["path"]).name  # same run name
        pairs.append({
            "run": Path(alone["path"]).name, "seed": alone["seed"],
            "target_sparsity": alone["target_sparsity"],
            "stack_members": stacked["metrics"].get("stack_members", 1),
            "top1_alone": alone["top1"], "top1_stacked": stacked["top1"],
            "top1_diff_pp": round(100 * (stacked["top1"] - alone["top1"]), 4),
            "max_weight_diff": max((stacked["weights"][k] - alone["weights"][k]).abs().max()
                                   .item() for k in alone["weights"]),
            # The run alone is the run the workflow made before stacking, bit for bit.
            "alone_equals_original": _same_weights(
                alone["weights"], source / "recover" / Path(alone["path"]).name / "model.pt"),
        })
    result.update(
        runs=len(pairs), wall_s_alone=round(walls["alone"], 2),
        wall_s_stacked=round(walls["stacked"], 2),
        speedup=round(walls["alone"] / walls["stacked"], 3),
        max_abs_top1_diff_pp=max(abs(x["top1_diff_pp"]) for x in pairs),
        mean_top1_diff_pp=round(sum(x["top1_diff_pp"] for x in pairs) / len(pairs), 4),
        load_average_after=os.getloadavg(), pairs=pairs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "pairs"}, indent=2))


if __name__ == "__main__":
    main()
