"""Run and job names are pinned: the plan of a fixed params file is the one the code made
before planning was separated from execution (commit 9fd3160), job for job.

`data/plan_params.yaml` is the repository's params.yaml as of that commit and
`data/plan_before.jsonl.gz` its `prunebench plan --set scale=all` there: 1,894 jobs of every
study, with their hashes, manifest paths, run directories and inputs. Every run directory
name (the hash of its description) and every job hash must be unchanged, so that finished
runs on users' disks stay valid. One difference is intended and checked exactly: a benchmark
job also waits for the dense run of its seed, which it times against (before, it read that
run without waiting for it, a race for methods whose runs do not descend from the dense run,
such as network slimming's own pretraining).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from prunebench.config import apply_overrides, read_params
from prunebench.plan import plan

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def before() -> dict[str, dict]:
    with gzip.open(DATA / "plan_before.jsonl.gz", "rt") as fh:
        return {job["manifest"]: job for job in map(json.loads, fh)}


@pytest.fixture(scope="module")
def now() -> dict[str, dict]:
    raw = apply_overrides(read_params(DATA / "plan_params.yaml"), ["scale=all"])
    return {job.manifest: {**job.wildcards, "manifest": job.manifest, "inputs": list(job.inputs),
                           "runs": list(job.runs)} for job in plan(raw)}


def test_every_job_and_run_keeps_its_name(before, now):
    assert len(before) == 1894
    assert set(now) == set(before)
    for manifest, job in before.items():
        assert {k: v for k, v in now[manifest].items() if k != "inputs"} == \
            {k: v for k, v in job.items() if k != "inputs"}, manifest


def test_inputs_are_unchanged_but_for_the_benchmark_of_the_dense_run(before, now):
    dense_jobs = {m for m, job in now.items() if job["stage"] == "train" and job["label"] == "dense"}
    added = 0
    for manifest, job in before.items():
        old, new = set(job["inputs"]), set(now[manifest]["inputs"])
        if job["stage"] != "benchmark":
            assert new == old, manifest
            continue
        assert old <= new and len(new - old) <= 1, manifest
        assert new - old <= dense_jobs, manifest
        seed = job["point"].split("seed")[1].split("-")[0]
        assert all(f"/seed{seed}-" in m for m in new & dense_jobs), manifest  # its own seed
        added += len(new - old)
    assert added > 0
