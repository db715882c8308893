"""GPU claims (prunebench.devices): parallel jobs on a multi-GPU machine take distinct GPUs,
and a claim ends with its process. Runs without GPUs: the claim is only file locks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from prunebench.devices import ENV_LOCK_DIR, claim_gpu

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
