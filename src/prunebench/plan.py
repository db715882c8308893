"""The job plan: which CLI invocations a params file asks for, and what each one produces.

Planning is pure: it reads a `StudyContext` (the study, the runs root, the scope and the
dense architecture's shape) and never builds an executor, so it claims no device and reads
no data; the Snakemake process plans without holding a GPU. The plan iterates over the
stages (`prunebench.stages.STAGES`); each stage lists its runs,
one per grid point, with their parent runs. Every run is one job (one seed x target of one
method), except where a stage groups runs that must be made in sequence in one process (a
lottery chain: the levels of one method x seed). A job's inputs are the jobs that hold its
runs' parents. Runs that train as one stack (`prunebench.stacking`) keep their own jobs: the
stack's leader waits for every member's parents and trains them all, the other members wait
for the leader. Nothing here knows about particular methods.

The workflow (Snakemake) schedules exactly this plan. A job's manifest path carries the hash
of the runs it produces, so editing one method's options changes only that method's manifest
paths: Snakemake then builds those and nothing else, without relying on file modification
times (which DVC checkouts change). The heavy outputs are hash-named run directories that the
CLI reuses when they are already finished.

The figures a study's runs will fill (`study_figures`) are known here too, from the same
declaration: the workflow's plot rules list exactly those, so no study gets a figure that
could only say it is empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunebench.analysis.names import figure_names
from prunebench.config import Study, config_hash
from prunebench.context import StudyContext
from prunebench.errors import ConfigError
from prunebench.labels import series_name
from prunebench.runs import Run
from prunebench.stacking import stacks
from prunebench.stages import STAGES, Stage
from prunebench.stages.base import method_of, targets
from prunebench.stages.rewind import REWIND, rewound
from prunebench.study import selected_studies


@dataclass(frozen=True)
class Job:
    """One CLI call: one grid point of a stage (or one lottery chain), named by the hash of
    the runs it makes, so editing one method's options reruns only that method's jobs.

    `point` is a readable name of the grid point (`seed0-s0.80`), not needed to find it. Each
    job is a process; locally they are forked from a server that has imported torch once
    (`prunebench.launcher`), so even the smallest grid point pays almost no start-up.
    """

    stage: str
    study: str
    label: str
    point: str
    hash: str
    manifest: str
    inputs: tuple[str, ...] = ()
    runs: tuple[str, ...] = field(default=(), compare=False)
    # Runs this job trains in one stack: its stack's size for a leader, else 1 (what a
    # cluster job's runtime limit scales with).
    stack: int = field(default=1, compare=False)

    @property
    def wildcards(self) -> dict[str, Any]:
        return {"stage": self.stage, "study": self.study, "label": self.label,
                "point": self.point, "hash": self.hash}


def manifest_path(jobs_root: str | Path, stage: str, study: str, label: str, point: str,
                  h: str) -> str:
    return str(Path(jobs_root) / study / stage / label / f"{point}-{h}.json")


def point_name(run: Run) -> str:
    """`seed0`, `seed0-s0.80` (weight sparsity), `seed1-c0.50` (channel sparsity),
    `seed0-macs0.5` (a budget), with the
    run's own name first where it is not the job's label (`lottery_reinit-seed0-s0.80`,
    `mag+distill-seed0-s0.80`, `slimming_pretrain-seed0`)."""
    meta = run.meta
    name = series_name(meta.get("label", run.label), meta.get("recovery"), meta.get("control"))
    parts = [] if name == run.label else [name]
    parts.append(f"seed{meta.get('seed', 0)}")
    if meta.get("budget_kind") is not None:  # `seed0-macs0.5`, `seed0-latency1.5b128`
        batch = meta.get("budget_batch_size")
        parts.append(f"{meta['budget_kind']}{meta['budget_value']:.12g}"
                     + ("" if batch is None else f"b{batch}"))
    elif meta.get("channel_sparsity") is not None:
        parts.append(f"c{meta['channel_sparsity']:.2f}")
    elif meta.get("target_sparsity"):
        parts.append(f"s{meta['target_sparsity']:.4g}")
    return "-".join(parts)


def group_runs(stage: Stage, runs: list[Run]) -> list[tuple[str, str, list[Run]]]:
    """A stage's runs as jobs: (point, hash, runs), one job per run unless the stage groups
    runs under one key (`Stage.job_key`)."""
    groups: dict[tuple[str, str], tuple[str, list[Run]]] = {}
    for run in runs:
        key = stage.job_key(run)
        if (run.label, key or run.hash) not in groups:
            groups[(run.label, key or run.hash)] = (key or point_name(run), [])
        groups[(run.label, key or run.hash)][1].append(run)
    return [(point, config_hash({"stage": stage.name, "runs": [r.description for r in members]}),
             members) for point, members in groups.values()]


def study_jobs(study: Study, runs_root: str | Path, jobs_root: str | Path) -> list[Job]:
    ctx = StudyContext(study, Path(runs_root))
    jobs: list[Job] = []
    job_of: dict[Path, str] = {}  # run directory -> manifest of the job that makes it
    for stage in STAGES.values():
        runs = stage.runs(ctx)
        stacked = stacks(stage, ctx, runs)
        grouped = [(point, h, members,
                    manifest_path(jobs_root, stage.name, study.name, members[0].label, point, h))
                   for point, h, members in group_runs(stage, runs)]
        job_of.update({r.path: manifest for *_, members, manifest in grouped for r in members})
        for point, h, members, manifest in grouped:
            waits_for = list(members)  # runs whose parents this job needs
            inputs, trains = set(), 1
            for run in members:
                stack = stacked.get(run.path, ())
                if stack and stack[0] is not run:
                    inputs.add(job_of[stack[0].path])  # the leader's job trains this run
                else:
                    waits_for += stack[1:]
                    trains = max(trains, len(stack))
            inputs |= {m for r in waits_for for m in _parent_jobs(r, job_of)}
            inputs.discard(manifest)
            jobs.append(Job(stage.name, study.name, members[0].label, point, h, manifest,
                            tuple(sorted(inputs)), tuple(str(r.path) for r in members),
                            trains))
    return jobs


def _parent_jobs(run: Run, job_of: Mapping[Path, str]) -> set[str]:
    """The jobs that make `run`'s parents; a parent no job lists (an intermediate lottery
    level) is made inside this job, so its own parents count instead. A parent made by the
    job itself is dropped by the caller."""
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
    _refuse_shared_runs(jobs)
    return jobs


def _refuse_shared_runs(jobs: list[Job]) -> None:
    """Two selected studies that ask for one run (the same description: the same data,
    model, recipe and seed) would each plan a job that makes it, and the two jobs would
    write one directory at once. Refused, naming both studies and the run."""
    owner: dict[str, str] = {}
    for job in jobs:
        for path in job.runs:
            first = owner.setdefault(path, job.study)
            if first != job.study:
                raise ConfigError(
                    f"studies {first!r} and {job.study!r} both make run {path} ({job.stage}, "
                    f"{job.label}): their jobs would write it at once; give them different "
                    "seeds or recipes, or run them one at a time (`--config only=...`)")


def final_jobs(jobs: list[Job]) -> list[Job]:
    """The jobs whose runs are results (dense baselines, recovered and lottery runs)."""
    return [j for j in jobs if STAGES[j.stage].result]


def study_figures(study: Study) -> tuple[str, ...]:
    """The figures (`analysis.names.figure_names`) that `study`'s runs will fill, from its
    declaration alone: the sparsity axes for an unstructured method with targets, the
    lottery figure for a lottery method (iterative hooks) or a rewind recovery of a method
    that is rewound (both make tickets), training curves where the dense model or a pruned
    unstructured one trains, the equal-cost figure with `budgets:`. The Pareto figures are
    every study's: the benchmark stage measures every result run."""
    ctx = StudyContext(study, Path("."))
    with_targets = [e for e in study.methods if targets(ctx, e)]
    unstructured = any(not method_of(e).structured for e in with_targets)
    lottery = any(method_of(e).iterative is not None for e in with_targets) or (
        REWIND in study.recover and any(rewound(e) for e in with_targets))
    curves = study.train.epochs > 0 or (unstructured and study.finetune.epochs > 0)
    return figure_names(unstructured=unstructured, lottery=lottery, curves=curves,
                        budgets=bool(study.budgets))
