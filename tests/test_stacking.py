"""Stacked training inside the workflow: which grid points share a stack is fixed by the plan,
the DAG keeps one job per grid point, and a stacked run equals the run trained alone."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from prunebench.cli import main
from prunebench.plan import plan
from prunebench.context import StudyContext
from prunebench.stacking import split_evenly, stacks
from prunebench.stages import STAGES
from prunebench.study import load_study

STUDY = {
    "data": {"name": "digits"},
    "model": {"name": "mlp_digits"},
    "train": {"optimizer": "adam", "lr": 0.003, "epochs": 2, "batch_size": 128},
    "finetune": {"epochs": 1},
    "methods": {"global_magnitude": {}, "random": {}, "snip": {}, "neuron_magnitude": {}},
    "sparsities": [0.5, 0.8],
    "channel_sparsities": [0.5],
    "recover": ["finetune", "distill"],
    "seeds": [0, 1],
}


def params(**stack) -> dict:
    study = copy.deepcopy(STUDY)
    if stack:
        study["stack"] = stack
    return {"runs_root": "runs", "studies": {"tiny": study}}


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def by_point(jobs, stage):
    return {(j.label, j.point): j for j in jobs if j.stage == stage}


def test_split_evenly_makes_the_fewest_equal_parts():
    assert [len(p) for p in split_evenly(list(range(18)), 8)] == [6, 6, 6]
    assert [len(p) for p in split_evenly(list(range(9)), 8)] == [5, 4]
    assert [len(p) for p in split_evenly(list(range(8)), 8)] == [8]
    assert sum(split_evenly(list(range(7)), 3), []) == list(range(7))  # order kept


def test_the_plan_keeps_one_job_per_grid_point_and_orders_each_stack_behind_its_leader(tmp_path):
    jobs = plan(params(max_members=4), tmp_path / "jobs")
    alone = plan(params(max_members=1), tmp_path / "jobs")
    # Stacking is how a job executes, not what the DAG shows: the same jobs either way.
    assert [(j.stage, j.label, j.point, j.hash) for j in jobs] == [
        (j.stage, j.label, j.point, j.hash) for j in alone]

    ctx = StudyContext(load_study(write(tmp_path, params(max_members=4)), "tiny"), "runs")
    finetune = STAGES["finetune"]
    stacked = stacks(finetune, ctx, finetune.runs(ctx))
    manifests = {path: j.manifest for j in jobs for path in j.runs}
    groups = {tuple(r.path for r in s) for s in stacked.values()}
    # Fine-tuning of masked networks stacks per method (2 seeds x 2 sparsities = 4 runs):
    # one stack for each of magnitude, random and SNIP; channel pruning and distillation
    # never stack. Stacks never mix methods, so editing one leaves the others' stacks alone.
    assert sorted(len(g) for g in groups) == [4, 4, 4]
    assert all(len({r.label for r in stacked[g[0]]}) == 1 for g in groups)
    labels = {r.label for s in stacked.values() for r in s}
    assert labels == {"global_magnitude", "random", "snip"}
    assert not any(r.stage == "distill" for s in stacked.values() for r in s)
    for group in groups:
        seeds = [run.spec.seed for run in stacked[group[0]]]
        assert seeds == sorted(seeds)  # one seed's members together: they share batches
        leader = manifests[str(group[0])]
        leader_job = next(j for j in jobs if j.manifest == leader)
        assert leader_job.stack == len(group)  # a cluster runtime limit scales with it
        for path in group[1:]:
            follower = next(j for j in jobs if j.manifest == manifests[str(path)])
            assert follower.stack == 1
            assert leader in follower.inputs  # the leader's job trains the follower's run
            assert set(leader_job.inputs) >= set(follower.inputs) - {leader}
    # Without stacking, a finetune job waits only for its own prune job.
    for job in alone:
        if job.stage == "finetune":
            assert all("/prune/" in i for i in job.inputs) and len(job.inputs) == 1
    # Dense trainings of the two seeds stack too: seed 1's job waits for seed 0's.
    dense = by_point(jobs, "train")
    assert dense[("dense", "seed0")].manifest in dense[("dense", "seed1")].inputs


def test_a_small_memory_budget_makes_smaller_stacks_and_one_member_none(tmp_path):
    raw = params(max_members=8)
    study = load_study(write(tmp_path, raw), "tiny")
    ctx = StudyContext(study, "runs")
    finetune = STAGES["finetune"]
    big = {len(s) for s in stacks(finetune, ctx, finetune.runs(ctx)).values()}
    raw["studies"]["tiny"]["stack"]["memory_mb"] = 2  # room for two members of this MLP
    small_ctx = StudyContext(load_study(write(tmp_path, raw), "tiny"), "runs")
    small = {len(s) for s in stacks(finetune, small_ctx, finetune.runs(small_ctx)).values()}
    assert big == {4} and small == {2}
    one = StudyContext(load_study(write(tmp_path, params(max_members=1)), "tiny"), "runs")
    assert stacks(finetune, one, finetune.runs(one)) == {}


def _job(jobs, stage, label, point):
    return next(j for j in jobs if (j.stage, j.label, j.point) == (stage, label, point))


def _weights(root: Path, run_path: str) -> dict:
    return torch.load(root / run_path / "model.pt", weights_only=True)


def test_a_followers_job_trains_its_stack_equal_to_runs_trained_alone(tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.chdir(tmp_path)
    raw = params(max_members=4)
    raw["studies"]["tiny"]["methods"] = {"global_magnitude": {}, "random": {}}
    raw["studies"]["tiny"]["recover"] = ["finetune"]
    path = write(tmp_path, raw)
    jobs = plan(raw, "jobs")
    follower = _job(jobs, "finetune", "random", "seed1-s0.8")
    # Run the follower's job first, outside any workflow: it makes its parents and its
    # whole stack, and each member says it trained in a stack of 4.
    assert main(["finetune", "--params", str(path), "--study", "tiny", "--no-progress",
                 "--job", follower.hash]) == 0
    capsys.readouterr()
    stack_runs = [p for j in jobs if j.stage == "finetune" for p in j.runs]
    done = [p for p in stack_runs if (tmp_path / p / "metrics.json").is_file()]
    members = [p for p in done
               if json.loads((tmp_path / p / "metrics.json").read_text()).get("stack_members")]
    assert len(stack_runs) == 8 and len(done) == 4  # of two stacks, the follower's alone
    assert members == done and follower.runs[0] in members

    # The same runs trained one by one (stack.max_members 1: same run names, other root).
    raw_alone = params(max_members=1)
    raw_alone["studies"]["tiny"].update(methods=raw["studies"]["tiny"]["methods"],
                                        recover=["finetune"])
    raw_alone["runs_root"] = "alone"
    (tmp_path / "alone_params").mkdir()
    alone = write(tmp_path / "alone_params", raw_alone)
    assert main(["finetune", "--params", str(alone), "--study", "tiny", "--no-progress"]) == 0
    for member in members:
        mine = _weights(tmp_path, member)
        solo = _weights(tmp_path, member.replace("runs/", "alone/", 1))
        for name in mine:
            torch.testing.assert_close(mine[name], solo[name], rtol=1e-4, atol=1e-5)
        stacked_m = json.loads((tmp_path / member / "metrics.json").read_text())
        solo_m = json.loads((tmp_path / member.replace("runs/", "alone/", 1) /
                             "metrics.json").read_text())
        assert abs(stacked_m["top1"] - solo_m["top1"]) <= 0.01
        assert "stack_members" not in solo_m

    # A stack is fixed by the plan, so a second stacked run of the same params is
    # bit-identical to the first.
    raw["runs_root"] = "again"
    (tmp_path / "again_params").mkdir()
    again = write(tmp_path / "again_params", raw)
    assert main(["finetune", "--params", str(again), "--study", "tiny", "--no-progress",
                 "--job", follower.hash]) == 0
    for member in members:
        first, second = _weights(tmp_path, member), _weights(
            tmp_path, member.replace("runs/", "again/", 1))
        assert all(torch.equal(first[k], second[k]) for k in first)


def test_two_jobs_of_one_stack_at_once_train_it_once(tmp_path):
    """After an edit, several members of a stack whose leader is done may run at once: the
    first trains the stack, the others wait for it and find their runs finished."""
    raw = params(max_members=4)
    raw["studies"]["tiny"]["methods"] = {"global_magnitude": {}, "random": {}}
    raw["studies"]["tiny"]["recover"] = ["finetune"]
    path = write(tmp_path, raw)
    jobs = plan(raw, "jobs")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    base = [sys.executable, "-m", "prunebench.cli", "--params", str(path), "--study", "tiny",
            "--no-progress"]
    subprocess.run([*base[:3], "prune", *base[3:]], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    a = _job(jobs, "finetune", "random", "seed1-s0.8")
    b = _job(jobs, "finetune", "random", "seed1-s0.5")
    procs = [subprocess.Popen([*base[:3], "finetune", *base[3:], "--job", j.hash], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for j in (a, b)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    logs = "".join(err for _, err in outputs)
    assert logs.count("runs as one stack") == 1
    for job in (a, b):
        assert json.loads((tmp_path / job.runs[0] / "metrics.json").read_text())["stack_members"]


@pytest.mark.parametrize("stack, message", [
    ({"max_members": 0}, "studies.tiny.stack.max_members must be an integer in [1, 64], got 0"),
    ({"max_members": 65}, "studies.tiny.stack.max_members must be an integer in [1, 64]"),
    ({"max_members": "8"}, "studies.tiny.stack.max_members must be"),
    ({"memory_mb": 0}, "studies.tiny.stack.memory_mb must be > 0"),
    ({"members": 4}, "studies.tiny.stack"),
])
def test_bad_stack_options_are_refused_at_parse_time(tmp_path, capsys, stack, message):
    path = write(tmp_path, params(**stack))
    assert main(["plan", "--params", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
