"""The job plan: which CLI invocations a params file asks for, and what each one produces.

The workflow (Snakemake) schedules exactly this plan. A job's manifest path carries the hash
of the runs it produces, so editing one method's options changes only that method's manifest
paths: Snakemake then builds those and nothing else, without relying on file modification
times (which DVC checkouts change). The heavy outputs are hash-named run directories that the
CLI reuses when they are already finished.

Per study and seed: `train` (dense); for a method applied to trained or initial weights,
`prune` then `finetune`; for one applied during training (gradual pruning), a single
`finetune` job that trains from the dense run's initialisation; for `lottery`, one `lottery`
job. The `sensitivity` method also gets a `sensitivity` job (`prunebench sensitivity`, the
per-layer curves), which its `prune` job waits for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunebench.config import Study, config_hash, selected_studies
from prunebench.pruning import METHODS
from prunebench.runs import Run, Workspace

@dataclass(frozen=True)
class Job:
    """One CLI call: a stage of one method of a study, over all the study's seeds.

    A job covers every seed (and sparsity) of its method because each job is a process that
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


def _job(jobs_root, stage, study: Study, label, runs: list[Run], inputs=()) -> Job:
    h = config_hash({"stage": stage, "runs": [r.description for r in runs]})
    return Job(stage, study.name, label, h, manifest_path(jobs_root, stage, study.name, label, h),
               tuple(inputs), tuple(str(r.path) for r in runs))


def study_jobs(study: Study, runs_root: str | Path, jobs_root: str | Path) -> list[Job]:
    ws = Workspace(study, runs_root)
    seeds = study.seeds
    train = _job(jobs_root, "train", study, "dense", [ws.train_run(seed) for seed in seeds])
    jobs = [train]
    for entry in study.methods:
        when = METHODS.get(entry.method).when
        grid = [(seed, s) for seed in seeds for s in ws.sparsities(entry)]
        if when in ("trained", "init"):
            prune_inputs = [train.manifest]
            if entry.method == "sensitivity":
                sens = _job(jobs_root, "sensitivity", study, entry.label,
                            [ws.sensitivity_run(seed, entry.options["sweep"]) for seed in seeds],
                            [train.manifest])
                jobs.append(sens)
                prune_inputs.append(sens.manifest)
            prune = _job(jobs_root, "prune", study, entry.label,
                         [ws.prune_run(entry, s, seed) for seed, s in grid], prune_inputs)
            fine = _job(jobs_root, "finetune", study, entry.label,
                        [ws.finetune_run(entry, s, seed) for seed, s in grid], [prune.manifest])
            jobs += [prune, fine]
        elif when == "during_training":
            jobs.append(_job(jobs_root, "finetune", study, entry.label,
                             [ws.finetune_run(entry, s, seed) for seed, s in grid], [train.manifest]))
        elif when == "iterative":
            runs = []
            for seed, s in grid:
                level = ws.lottery_level_run(entry, ws.lottery_schedule(entry, s), seed)
                runs.append(level)
                if entry.options.get("reinit_control"):
                    runs.append(ws.reinit_run(level))
            jobs.append(_job(jobs_root, "lottery", study, entry.label, runs, [train.manifest]))
    return jobs


def plan(raw_params: Mapping[str, Any], jobs_root: str | Path = "results/jobs") -> list[Job]:
    """Every job of the studies that the params' `scale` switches on."""
    runs_root = raw_params.get("runs_root", "results/runs")
    jobs = []
    for study in selected_studies(raw_params).values():
        jobs += study_jobs(study, runs_root, jobs_root)
    return jobs


def final_jobs(jobs: list[Job]) -> list[Job]:
    """The jobs whose runs are results (dense baselines, fine-tuned and lottery runs)."""
    return [j for j in jobs if j.stage in ("train", "finetune", "lottery")]
