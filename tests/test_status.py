"""`prunebench status` and `prunebench rerun` on a real Snakemake run (issue #23, items 2 and 5).

A tiny study (dense, SNIP and global magnitude, fine-tuned, benchmarked; two seeds, whose
runs of one method train as one stack) runs in a copy of the workflow whose package source is a copy too (PYTHONPATH), so the test can change the
code the way a developer would. Then, at once:
- a line of code is added to SNIP's module (the method's runs are stale; what is made from
  them is downstream), and a comment to magnitude's (nothing changes);
- a fine-tuned run's `metrics.json` is hand-edited (damaged: `aggregate` refuses it; its
  stack-mate is redone with it, so that the stack's bits stay the same);
- the dense model's benchmark run directory is deleted after its job finished (missing:
  Snakemake alone says "Nothing to be done").
`prunebench status` must report exactly that, and `prunebench rerun` must redo exactly those
runs and their descendants, leave every other run untouched, and end with the tables and
models of the uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from projectutil import copy_workflow_files

pytest.importorskip("snakemake", reason="the workflow extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STUDY = {
    "data": {"name": "digits", "val_size": 0.1},
    "model": {"name": "mlp_digits", "kwargs": {"hidden": [32]}},
    "train": {"epochs": 1, "lr": 0.05, "batch_size": 64},
    "finetune": {"epochs": 1, "lr": 0.01},
    "methods": {"global_magnitude": {}, "snip": {}},
    "sparsities": [0.5],
    "recover": ["finetune"],
    "benchmark": {"batch_sizes": [1], "min_time_s": 0.01, "modes": ["dense"]},
    "seeds": [0, 1],  # two seeds: the runs of one method train as one stack
}


# The runs and their table: the figures and report add time, not coverage (test_workflow).
# Given as Snakemake's target, it also checks that `rerun` works whatever the target (a
# missing manifest alone is not remade when what is made from it is there).
TARGET = ("results/studies/tiny/runs.csv",)


def sh(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(cwd / "src")}
    out = subprocess.run(list(args), cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {out.returncode}:\n{out.stdout[-4000:]}")
    return out


def states(cwd: Path, check: int) -> dict[tuple[str, str, int], dict]:
    """Every run's state by (stage, method, seed), checking `status --check`'s exit status."""
    out = sh(cwd, "prunebench", "status", "--json", "--check", check=False)
    assert out.returncode == check, out.stdout[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {(r["stage"], r["method"], r["seed"]): r for r in rows}


def run_files(cwd: Path) -> dict[str, tuple[str, int]]:
    """Every file of every run: (sha256, mtime) by path."""
    out = {}
    for path in sorted((cwd / "results/runs").rglob("*")):
        if path.is_file() and path.name != "log.txt" and "checkpoints" not in path.parts:
            out[str(path.relative_to(cwd))] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                               path.stat().st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("status") / "project"
    dest.mkdir()
    copy_workflow_files(dest)
    shutil.copytree(ROOT / "src", dest / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (dest / "params.yaml").write_text(yaml.safe_dump(
        {"scale": "default", "runs_root": "results/runs", "studies": {"tiny": STUDY}}))
    sh(dest, "snakemake", "--cores", "2", *TARGET)
    return dest


def test_status_finds_stale_damaged_and_missing_runs_and_rerun_redoes_exactly_them(project):
    before = run_files(project)
    clean = states(project, check=0)
    assert {r["state"] for r in clean.values()} == {"ok"}, clean
    table_before = pd.read_csv(project / "results/studies/tiny/runs.csv")

    snip = project / "src/prunebench/pruning/snip.py"
    snip.write_text(snip.read_text() + "\n_REVISION = 2  # a change that computes the same\n")
    magnitude = project / "src/prunebench/pruning/magnitude.py"
    magnitude.write_text("# a reworded comment\n" + magnitude.read_text())
    mate = project / clean[("finetune", "global_magnitude", 1)]["run"]
    assert json.loads((mate / "metrics.json").read_text())["stack_members"] == 2
    edited = Path(project / clean[("finetune", "global_magnitude", 0)]["run"])
    metrics = json.loads((edited / "metrics.json").read_text())
    (edited / "metrics.json").write_text(json.dumps({**metrics, "top1": 0.999}, indent=2,
                                                    sort_keys=True) + "\n")
    deleted = project / clean[("benchmark", "dense", 0)]["run"]
    shutil.rmtree(deleted)

    # What a user sees without status: Snakemake finds nothing to do, aggregate refuses.
    assert "Nothing to be done" in sh(project, "snakemake", "--cores", "2", "-n", *TARGET).stdout
    jobs = project / "results/jobs/tiny"
    for stage, needle in (("finetune", "metrics.json does not match"),
                          ("benchmark", "is not a finished run directory")):
        manifests = sorted(str(p) for p in (jobs / stage).rglob("*.json"))
        agg = sh(project, "prunebench", "aggregate", *manifests, "--out", "tables", check=False)
        assert agg.returncode == 2 and needle in agg.stdout, agg.stdout
        assert "prunebench rerun" in agg.stdout and not (project / "tables").exists()

    now = states(project, check=1)
    got = {key: r["state"] for key, r in now.items()}
    assert got == {
        ("train", "dense", 0): "ok", ("train", "dense", 1): "ok",
        # a comment is not a change
        ("prune", "global_magnitude", 0): "ok", ("prune", "global_magnitude", 1): "ok",
        ("prune", "snip", 0): "stale", ("prune", "snip", 1): "stale",
        # they only read what SNIP made
        ("finetune", "snip", 0): "downstream", ("finetune", "snip", 1): "downstream",
        ("benchmark", "snip", 0): "downstream", ("benchmark", "snip", 1): "downstream",
        ("finetune", "global_magnitude", 0): "damaged",
        ("finetune", "global_magnitude", 1): "ok",  # its stack-mate: redone with it
        ("benchmark", "global_magnitude", 0): "downstream",
        ("benchmark", "global_magnitude", 1): "ok",  # made from the stack-mate: redone
        ("benchmark", "dense", 0): "missing", ("benchmark", "dense", 1): "ok",
    }, now
    assert "snip.py" in now[("prune", "snip", 0)]["detail"]
    assert "metrics.json" in now[("finetune", "global_magnitude", 0)]["detail"]
    report = sh(project, "prunebench", "status").stdout
    assert "prunebench/pruning/snip.py" in report and "11 runs to redo" in report

    out = sh(project, "prunebench", "rerun", "--", "--cores", "2", *TARGET)
    assert "to redo: 11 runs" in out.stdout and "1 stack-mate" in out.stdout
    after = run_files(project)
    assert {r["state"] for r in states(project, check=0).values()} == {"ok"}
    redone = {key for key, r in now.items() if r["state"] != "ok"} | {
        ("finetune", "global_magnitude", 1), ("benchmark", "global_magnitude", 1)}
    for key, row in now.items():
        files = {p: v for p, v in after.items() if p.startswith(row["run"] + "/")}
        assert files, key
        old = {p: v for p, v in before.items() if p.startswith(row["run"] + "/")}
        for path, (digest, mtime) in files.items():
            if key in redone:
                assert mtime != old[path][1], (key, path)  # made again
            else:
                assert (digest, mtime) == old[path], (key, path)  # untouched
        # The same code computes the same bits: every model is the uninterrupted run's (a
        # stack retrained whole; a member retrained alone would round differently).
        for path in files:
            if path.endswith(("model.pt", "mask.pt")):
                assert files[path][0] == old[path][0], path
    table = pd.read_csv(project / "results/studies/tiny/runs.csv")
    assert table["top1"].tolist() == table_before["top1"].tolist()  # 0.999 is gone
    assert table["source_hash"].notna().all() and table["env_id"].nunique() == 1
