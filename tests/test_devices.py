"""GPU claims (prunebench.devices): parallel jobs on a multi-GPU machine take distinct GPUs,
and a claim ends with its process. Runs without GPUs: the claim is only file locks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prunebench.devices import ENV_FAKE_GPUS, ENV_LOCK_DIR, ENV_WAIT_S, claim_gpu
from projectutil import copy_workflow_files

HOLD = ("import sys, time; from prunebench.devices import claim_gpu; "
        "print(claim_gpu(int(sys.argv[1]), wait_s=float(sys.argv[2]), poll_s=0.05), flush=True); "
        "time.sleep(float(sys.argv[3]))")


def holder(env, count, wait_s=0.0, hold_s=30.0):
    return subprocess.Popen([sys.executable, "-c", HOLD, str(count), str(wait_s), str(hold_s)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def env(tmp_path):
    return {**os.environ, ENV_LOCK_DIR: str(tmp_path / "locks")}


def test_parallel_jobs_take_distinct_gpus_and_wait_when_all_are_taken(env):
    first, second = holder(env, 3), holder(env, 3)
    freed = int(second.stdout.readline())
    claimed = {int(first.stdout.readline()), freed}
    third = holder(env, 3)
    claimed.add(int(third.stdout.readline()))
    assert claimed == {0, 1, 2}
    fourth = holder(env, 3, wait_s=0.5, hold_s=0)
    assert fourth.wait(timeout=60) != 0
    assert "all 3 GPUs are held" in fourth.stderr.read()
    # A claim ends with its process, however it ends.
    second.kill()
    second.wait()
    late = holder(env, 3, wait_s=10, hold_s=0)
    assert int(late.stdout.readline()) == freed and late.wait(timeout=60) == 0
    for proc in (first, third):
        proc.kill()
        proc.wait()


def test_one_gpu_needs_no_claim_and_a_process_keeps_its_claim(env, monkeypatch):
    monkeypatch.setenv(ENV_LOCK_DIR, env[ENV_LOCK_DIR])
    assert claim_gpu(1) == 0 and not os.path.exists(env[ENV_LOCK_DIR])
    index = claim_gpu(4)
    assert claim_gpu(4) == index  # the benchmark stage resolves the device again


# ---------------------------------------------------------------- planning vs executing
# No machine here has two GPUs, so PRUNEBENCH_FAKE_GPUS=N fakes one: devices are claimed
# exactly as among N real GPUs, and the work runs on the CPU.

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

PLAN_THEN_EXECUTE = """
import json, sys
from prunebench import devices
from prunebench.config import apply_overrides, read_params
from prunebench.context import StudyContext
from prunebench.plan import plan
from prunebench.study import load_study

jobs = plan(apply_overrides(read_params(sys.argv[1]), ["scale=all"]), sys.argv[2])
after_plan = devices.held()
from prunebench.executor import Executor

ctx = StudyContext(load_study(sys.argv[1], "smoke"), sys.argv[2])
executor = Executor(ctx, "auto")
print(json.dumps({"jobs": len(jobs), "after_plan": after_plan, "after_executor": devices.held(),
                  "device": str(executor.device)}))
"""


def test_planning_claims_no_gpu_on_a_machine_with_several(env, tmp_path):
    """The Snakemake process plans every study; with two GPUs it must hold neither. The
    executor, which runs a job, claims one: the control that shows the fake is in force."""
    env = {**env, ENV_FAKE_GPUS: "2"}
    out = subprocess.run([sys.executable, "-c", PLAN_THEN_EXECUTE, str(ROOT / "params.yaml"),
                          str(tmp_path / "runs")], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["jobs"] > 1000
    assert result["after_plan"] == []
    assert result["after_executor"] == [0] and result["device"] == "cpu"


TWO_SEEDS = {
    "scale": "default",
    "runs_root": "results/runs",
    "studies": {
        "tiny": {
            "data": {"name": "digits", "val_size": 0.1},
            "model": {"name": "mlp_digits"},
            # Long enough that the two dense trainings, started together, overlap.
            "train": {"optimizer": "sgd", "lr": 0.05, "epochs": 8, "batch_size": 64},
            "finetune": {"epochs": 1, "lr": 0.01},
            "methods": {"global_magnitude": {}},
            "sparsities": [0.5, 0.8],
            "recover": ["finetune"],
            "benchmark": {"batch_sizes": [1], "min_time_s": 0.01},
            "seeds": [0, 1],
            "stack": {"max_members": 1},  # every run its own job, so jobs run side by side
        }
    },
}


@pytest.mark.slow
def test_concurrent_workflow_jobs_each_get_their_own_gpu(env, tmp_path):
    """`snakemake --resources gpu=2` on a machine with two (faked) GPUs: the two dense
    trainings run at once, each on a GPU of its own, and no job waits for one (a job that
    finds both held fails at once: PRUNEBENCH_GPU_WAIT_S=0). Before planning was separated
    from execution, the Snakemake process itself held GPU 0 for the whole run."""
    pytest.importorskip("snakemake", reason="the workflow extra is not installed")
    copy_workflow_files(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TWO_SEEDS, sort_keys=False))
    env = {**env, ENV_FAKE_GPUS: "2", ENV_WAIT_S: "0",
           "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
    proc = subprocess.run([str(BIN / "snakemake"), "--cores", "2", "--resources", "gpu=2",
                           "--until", "finetune"], cwd=tmp_path, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    claims = {}
    assert "device: gpu" not in (tmp_path / "results/logs/tiny/download.log").read_text()
    for log in (tmp_path / "results/logs/tiny").glob("*/*/*.log"):
        found = re.findall(r"device: gpu (\d) of 2", log.read_text())
        assert len(found) == 1, (log, log.read_text()[-2000:])
        claims[str(log.relative_to(tmp_path / "results/logs/tiny"))] = int(found[0])
    stages = {name.split("/")[0] for name in claims}
    assert stages == {"train", "prune", "finetune"}, claims
    dense = [index for name, index in claims.items() if name.startswith("train/")]
    assert sorted(dense) == [0, 1], claims  # the two seeds' trainings, side by side
