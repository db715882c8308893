"""The bring-your-own example (`examples/byo/`), as a user runs it: a `git clone` of the
committed project, the script that makes the image-folder dataset, the example's params as
params.yaml, and plain `snakemake`. Its model is the user's own file (a residual network
named by its factory), its dataset an image folder a plugin registers, and one of its
methods the plugin's own. The clone runs its own code (PYTHONPATH=<clone>/src): commit before
running these tests locally.

A second test takes the same model, data and method through the Python API instead."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("snakemake", reason="the workflow extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("byo") / "prunebench"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True, timeout=300)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(repo / "src")}
    run([sys.executable, "examples/byo/make_data.py"], repo, env)  # as the README says
    # The example's params, cut to one seed and one target to keep the test short (as a
    # user might): the example's model, data and both methods, with half the jobs.
    text = (repo / "examples/byo/params.yaml").read_text()
    for grid, cut in (("seeds: [0, 1]", "seeds: [0]"), ("sparsities: [0.5, 0.8]",
                                                         "sparsities: [0.8]")):
        assert grid in text
        text = text.replace(grid, cut)
    (repo / "params.yaml").write_text(text)
    run(["snakemake", "--cores", "2"], repo, env)
    return repo, env


def test_the_example_runs_through_the_workflow_in_a_clone(clone):
    repo, _ = clone
    with open(repo / "results/studies/byo/runs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_series = {}
    for row in rows:
        by_series.setdefault(row["series"], []).append(row)
    assert set(by_series) == {"dense", "taylor", "global_magnitude"}
    assert all(r["model"] == "examples.byo.model:small_resnet" for r in rows)
    assert all(r["dataset"] == "byo_shapes" for r in rows)
    assert len(by_series["dense"]) == 1 and len(by_series["taylor"]) == 1  # 1 seed x 1 target
    for row in rows:
        assert float(row["top1"]) > 0.5, row  # three shapes: chance is 1/3
    for row in by_series["taylor"]:
        assert abs(float(row["mask_sparsity"]) - float(row["target_sparsity"])) < 0.01
    report = (repo / "results/studies/byo/report.md").read_text()
    assert "taylor" in report


def manifests(repo: Path) -> dict[tuple[str, str, str], str]:
    """The jobs the workflow finished, from their manifests
    (`results/jobs/byo/<stage>/<label>/<point>-<hash>.json`): (stage, label, point) -> hash."""
    jobs = {}
    for path in (repo / "results/jobs/byo").glob("*/*/*.json"):
        point, job_hash = path.stem.rsplit("-", 1)
        jobs[(path.parent.parent.name, path.parent.name, point)] = job_hash
    return jobs


def dry_run_jobs(out: str) -> dict[tuple[str, str, str], str]:
    """The stage jobs a `snakemake -n` would run: (rule, label, point) -> hash, from the
    `wildcards:` line Snakemake prints under each job."""
    jobs, rule = {}, None
    for line in out.splitlines():
        if m := re.match(r"(?:local)?rule (\w+):$", line):
            rule = m.group(1)
        elif m := re.match(r"\s+wildcards: (.*)$", line):
            wildcards = dict(item.split("=", 1) for item in m.group(1).split(", "))
            if "hash" in wildcards:
                jobs[(rule, wildcards["label"], wildcards["point"])] = wildcards["hash"]
    return jobs


def test_the_plugin_names_the_runs(clone):
    """Editing the plugin renames, and so reruns, every run that uses what it registers: the
    example's plugin registers the dataset, so every job of the study."""
    repo, env = clone
    before = manifests(repo)
    assert len(before) == 8, before  # train 1, prune 2, finetune 2, benchmark 3
    dry = run(["snakemake", "-n", "--cores", "2"], repo, env).stdout
    assert "Nothing to be done" in dry, dry[-3000:]
    plugin = repo / "examples/byo/plugin.py"
    plugin.write_text(plugin.read_text() + "\n# edited\n")
    dry = run(["snakemake", "-n", "--cores", "2"], repo, env).stdout
    after = dry_run_jobs(dry)
    assert "Nothing to be done" not in dry and set(after) == set(before), dry[-3000:]
    assert all(before[k] != after[k] for k in before), (before, after)


API_SCRIPT = """
import json, sys, torch, prunebench
from prunebench import plugins
from prunebench.data import load_dataset
from examples.byo.make_data import make
from examples.byo.model import small_resnet

make(__import__("pathlib").Path("data/byo_shapes"), {"train": 20, "test": 10})
plugins.load("examples/byo/plugin.py", "test", root=sys.argv[1])
data = load_dataset("byo_shapes", "data", val_size=0.0, device=torch.device("cpu"))
torch.manual_seed(0)
model = small_resnet(3, tuple(data.input_shape), width=8, blocks=1)
batches = [(data.train_x[i:i + 16], data.train_y[i:i + 16]) for i in range(0, 48, 16)]
result = prunebench.prune(model, "taylor", sparsity=0.7, data=batches)
weights = sum(int(m.numel()) for m in result.mask.values())
kept = sum(int(m.sum()) for m in result.mask.values())
record = prunebench.measure(result.model, data.test_x[:1])
print(json.dumps({"sparsity": 1 - kept / weights, "params": record["params_total"],
                  "latency": "latency" in record}))
"""


def test_the_example_through_the_python_api(tmp_path):
    """The same model file, data and plugin method in a notebook's way, no workflow (in a
    process of its own: the plugin's registrations stay out of this one)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    out = subprocess.run([sys.executable, "-c", API_SCRIPT, str(ROOT)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert abs(result["sparsity"] - 0.7) < 0.01
    assert result["params"] > 0 and result["latency"]
