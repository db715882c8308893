"""The job plan: which CLI invocations a params file asks for, and what each one produces.

The plan iterates over the stages (`prunebench.stages.STAGES`); each stage lists its runs,
one per grid point, with their parent runs. Runs are grouped into jobs by stage and label
(one job per stage x method of a study, covering its seeds and targets), and a job's inputs
are the jobs that hold its runs' parents. Nothing here knows about particular methods.

The workflow (Snakemake) schedules exactly this plan. A job's manifest path carries the hash
of the runs it produces, so editing one method's options changes only that method's manifest
paths: Snakemake then builds those and nothing else, without relying on file modification
times (which DVC checkouts change). The heavy outputs are hash-named run directories that the
CLI reuses when they are already finished.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunebench.config import Study, config_hash
from prunebench.runs import Run, Workspace
from prunebench.stages import STAGES
from prunebench.study import selected_studies


@dataclass(frozen=True)
class Job:
    """One CLI call: a stage of one method of a study, over all the study's seeds.

    A job covers every seed (and target) of its method because each job is a process that
    pays ~1.5 s of Python and torch start-up; per-seed or per-sparsity jobs on the small
    default study would spend most of their time starting (see results/granularity.json).
    Jobs stay per method, so editing one method's options reruns only that method's jobs.
    """

    stage: str
    study: str
    label: str
    hash: str
    manifest: str
    inputs: tuple[str, ...] = ()
    runs: tuple[str, ...] = field(default=(), compare=False)

    @property
    def wildcards(self) -> dict[str, Any]:
        return {"stage": self.stage, "study": self.study, "label": self.label, "hash": self.hash}


def manifest_path(jobs_root: str | Path, stage: str, study: str, label: str, h: str) -> str:
    return str(Path(jobs_root) / study / stage / f"{label}-{h}.json")


def study_jobs(study: Study, runs_root: str | Path, jobs_root: str | Path) -> list[Job]:
    ws = Workspace(study, runs_root)
    jobs: list[Job] = []
    job_of: dict[Path, str] = {}  # run directory -> manifest of the job that makes it
    for stage in STAGES.values():
        groups: dict[str, list[Run]] = {}
        for run in stage.runs(ws):
            groups.setdefault(run.label, []).append(run)
        for label, runs in groups.items():
            h = config_hash({"stage": stage.name, "runs": [r.description for r in runs]})
            manifest = manifest_path(jobs_root, stage.name, study.name, label, h)
            inputs = sorted({m for r in runs for m in _parent_jobs(r, job_of)})
            jobs.append(Job(stage.name, study.name, label, h, manifest, tuple(inputs),
                            tuple(str(r.path) for r in runs)))
            job_of.update({r.path: manifest for r in runs})
    return jobs


def _parent_jobs(run: Run, job_of: Mapping[Path, str]) -> set[str]:
    """The jobs that make `run`'s parents; a parent no job lists (an intermediate lottery
    level) is made inside this job, so its own parents count instead."""
    found = set()
    for parent in run.parents:
        if parent.path in job_of:
            found.add(job_of[parent.path])
        else:
            found |= _parent_jobs(parent, job_of)
    return found


def plan(raw_params: Mapping[str, Any], jobs_root: str | Path = "results/jobs") -> list[Job]:
    """Every job of the studies that the params' `scale` switches on."""
    runs_root = raw_params.get("runs_root", "results/runs")
    jobs = []
    for study in selected_studies(raw_params).values():
        jobs += study_jobs(study, runs_root, jobs_root)
    return jobs


def final_jobs(jobs: list[Job]) -> list[Job]:
    """The jobs whose runs are results (dense baselines, recovered and lottery runs)."""
    return [j for j in jobs if STAGES[j.stage].result]
