"""`prunebench status` and `prunebench rerun`: which planned runs can be trusted, and redoing
the others.

Snakemake decides what to run from its job manifests, and a run directory is reused when its
`metrics.json` exists: neither notices a run whose source has changed since it was made, a
run directory deleted after its job finished, or a file edited after the fact. `survey`
looks at every run the params plan (the same plan the workflow runs) and says of each:

- `ok`: finished, every file matches its checksum, made by today's source;
- `stale`: finished, but the source that decides its result (`prunebench.sources`) has
  changed since (the files are named);
- `damaged`: a file no longer matches its checksum, or is gone (named);
- `missing`: not finished although the job that makes it has finished (its manifest is
  there): the run directory was deleted or emptied afterwards;
- `downstream`: itself in order, but made from a stale, damaged or missing run;
- `unrecorded`: finished before runs recorded their source (cannot be checked; redone with
  `--unrecorded`);
- `pending`: not made yet (the workflow will make it).

`rerun` removes the stale, damaged and missing runs and everything downstream of them (run
directories and the manifests of their jobs), then runs Snakemake, which remakes exactly
those jobs and the tables, figures and reports that read them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunebench.context import StudyContext
from prunebench.errors import ConfigError
from prunebench.plan import group_runs, manifest_path
from prunebench.runs import CHECKSUMS, Run, damaged_file
from prunebench.sources import recorded, stale_files
from prunebench.stacking import stacks
from prunebench.stages import STAGES
from prunebench.study import selected_studies

JOBS_ROOT = "results/jobs"  # where the workflow writes job manifests (common.smk)
STUDIES_ROOT = "results/studies"  # and each study's tables (common.smk's TABLES)
TABLES = ("runs.csv", "summary.csv", "summary.md", "metrics.json")
STATES = ("ok", "stale", "damaged", "missing", "downstream", "unrecorded", "pending")
REDO = ("stale", "damaged", "missing")  # what `rerun` redoes, with what is downstream of them


@dataclass
class RunState:
    run: Run
    study: str
    manifest: str  # the job that makes the run
    state: str = "pending"
    detail: str = ""
    stack: tuple[Path, ...] = ()  # the runs it trains with as one stack (itself included)

    @property
    def name(self) -> str:
        return self.run.meta.get("label", self.run.label)


def survey(raw_params: Mapping[str, Any], jobs_root: str | Path = JOBS_ROOT) -> list[RunState]:
    """The state of every run the params plan, parents before children."""
    runs_root = Path(raw_params.get("runs_root", "results/runs"))
    states: dict[Path, RunState] = {}
    for study in selected_studies(raw_params).values():
        ctx = StudyContext(study, runs_root)
        for stage in STAGES.values():
            runs = stage.runs(ctx)
            for point, h, members in group_runs(stage, runs):
                manifest = manifest_path(jobs_root, stage.name, study.name, members[0].label,
                                         point, h)
                for run in members:
                    _add(run, study.name, manifest, states)
            for path, stack in stacks(stage, ctx, runs).items():
                states[path].stack = tuple(r.path for r in stack)
    for item in states.values():  # parents first (dict order): their state is known
        item.state, item.detail = _own_state(item)
        if item.state in ("ok", "unrecorded", "stale"):
            bad = [states[p.path] for p in item.run.parents
                   if states[p.path].state in (*REDO, "downstream")]
            if bad and item.state != "stale":
                item.state, item.detail = "downstream", f"made from {bad[0].run.path}"
    return list(states.values())


def _add(run: Run, study: str, manifest: str, states: dict[Path, RunState]) -> None:
    """Add `run` after its parents; a parent no job lists (an intermediate lottery level) is
    made by the job of the run that reads it."""
    if run.path in states:
        return
    for parent in run.parents:
        _add(parent, study, manifest, states)
    states[run.path] = RunState(run, study, manifest)


def _own_state(item: RunState) -> tuple[str, str]:
    run = item.run
    if not run.done:
        if _listed(item.manifest, run):
            return "missing", f"its job finished ({item.manifest}) but the run is not there"
        return "pending", ""
    damaged = damaged_file(run.path)
    if damaged == CHECKSUMS:
        return "damaged", f"{CHECKSUMS} cannot be read"
    if damaged is not None:
        return "damaged", f"{damaged} does not match its checksum"
    try:
        metrics = run.metrics()
    except ValueError:
        return "damaged", "metrics.json is not JSON"
    source = recorded(metrics)
    if source is None:
        return "unrecorded", ""
    changed = stale_files(run, source)
    return ("ok", "") if changed is None else ("stale", ", ".join(changed))


def _listed(manifest: str, run: Run) -> bool:
    """Whether the job manifest exists and lists `run` (the same run directory: a manifest
    written for another runs root names other directories)."""
    try:
        listed = json.loads(Path(manifest).read_text()).get("runs", [])
    except (OSError, ValueError, AttributeError):
        return False
    return any(isinstance(e, dict) and Path(str(e.get("path", ""))) == run.path for e in listed)


def to_redo(states: Sequence[RunState], unrecorded: bool = False) -> list[RunState]:
    """The runs `rerun` removes: stale, damaged, missing (and unrecorded if asked), and every
    run made from one of them."""
    redo_states = set(REDO) | ({"unrecorded"} if unrecorded else set())
    by_path = {s.run.path: s for s in states}
    chosen: set[Path] = set()
    changed = True
    while changed:  # until stacks and descendants add nothing more
        changed = False
        for item in states:  # parents first
            if item.run.path in chosen:
                continue
            if (item.state in redo_states or any(p.path in chosen for p in item.run.parents)
                    or any(m in chosen for m in item.stack)):
                # A stack's runs are redone together: one retrained alone would round
                # differently from its stack-mates (prunebench.stacking).
                chosen.add(item.run.path)
                changed = True
    return [by_path[p] for p in by_path if p in chosen and by_path[p].state != "pending"]


def summary_table(states: Sequence[RunState]) -> list[dict[str, Any]]:
    """Counts per study, stage and method label (rows with anything to report)."""
    counts: dict[tuple[str, str, str], Counter] = {}
    for s in states:
        counts.setdefault((s.study, s.run.stage, s.name), Counter())[s.state] += 1
    return [{"study": k[0], "stage": k[1], "method": k[2], **{st: c[st] for st in STATES}}
            for k, c in counts.items()]


def format_report(states: Sequence[RunState], unrecorded: bool = False) -> str:
    total = Counter(s.state for s in states)
    lines = [f"{len(states)} planned runs: "
             + ", ".join(f"{total[st]} {st}" for st in STATES if total[st])]
    rows = summary_table(states)
    widths = {k: max([len(k), *(len(str(r[k])) for r in rows)]) + 2
              for k in ("study", "stage", "method")}
    header = "".join(f"{k:<{w}}" for k, w in widths.items()) + "".join(f"{st:>11}" for st in STATES)
    lines += ["", header]
    for row in rows:
        lines.append("".join(f"{row[k]:<{w}}" for k, w in widths.items())
                     + "".join(f"{row[st] or '.':>11}" for st in STATES))
    changed = Counter(s.detail for s in states if s.state == "stale")
    if changed:
        lines += ["", "stale runs, by the source that changed:"]
        lines += [f"  {n:5d}  {files}" for files, n in changed.most_common()]
    for s in states:
        if s.state in ("damaged", "missing"):
            lines.append(f"{s.state}: {s.run.path}: {s.detail}")
    redo = to_redo(states, unrecorded)
    if redo:
        lines += ["", f"{len(redo)} runs to redo (stale, damaged, missing and what is made "
                      "from them): `prunebench rerun` (add Snakemake's options after `--`)"]
    if total["unrecorded"]:
        lines += ["", f"{total['unrecorded']} runs predate source records (their source "
                      "cannot be checked): `prunebench rerun --unrecorded` redoes them too"]
    return "\n".join(lines)


def _redo_reason(item: RunState) -> str:
    """Why `rerun` redoes a run: its own state, or (for a run in order) "downstream" of
    one it is made from, or "stack-mate" of one it trains with."""
    if item.state not in ("ok", "downstream"):
        return item.state
    return "downstream" if item.state == "downstream" or not item.stack else "stack-mate"


def remove(states: Iterable[RunState]) -> tuple[int, int]:
    """Delete the run directories of `states`, the manifests of their jobs and their studies'
    tables, so that Snakemake remakes them, whatever target it is given (a missing
    intermediate file alone is not remade when the files made from it are there; a missing
    table is, with everything it reads); (runs, manifests) removed."""
    runs = manifests = 0
    studies = set()
    for s in states:
        studies.add(s.study)
        if s.run.path.exists():
            shutil.rmtree(s.run.path)
            runs += 1
        if Path(s.manifest).is_file():
            Path(s.manifest).unlink()
            manifests += 1
    for study in studies:
        for name in TABLES:
            (Path(STUDIES_ROOT) / study / name).unlink(missing_ok=True)
    return runs, manifests


def rerun(raw_params: Mapping[str, Any], snakemake_args: Sequence[str], *,
          unrecorded: bool = False, dry_run: bool = False) -> int:
    """`prunebench rerun`: remove what must be redone, then run Snakemake; its exit status."""
    states = survey(raw_params)
    redo = to_redo(states, unrecorded)
    counts = Counter(_redo_reason(s) for s in redo)
    print(f"to redo: {len(redo)} runs ("
          + ", ".join(f"{n} {st}" for st, n in counts.most_common()) + ")" if redo
          else "nothing to redo: every finished run matches its checksums and today's source")
    if dry_run:
        for s in redo:
            print(f"  {_redo_reason(s):<11} {s.run.path}  {s.detail}")
        return 0
    locks = Path(".snakemake/locks")
    if locks.is_dir() and any(locks.iterdir()):
        raise ConfigError(".snakemake/locks is not empty: a workflow may be running in this "
                          "project, and rerun would delete runs under it; wait for it, or "
                          "run `snakemake --unlock` if none is")
    if redo:
        runs, manifests = remove(redo)
        print(f"removed {runs} run directories and {manifests} job manifests")
    args = list(snakemake_args) or ["--cores", "all"]
    snakemake = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    print("running: snakemake " + " ".join(args), flush=True)
    return subprocess.run([snakemake, *args]).returncode


def as_json(states: Sequence[RunState]) -> Iterable[str]:
    for s in states:
        yield json.dumps({"study": s.study, "stage": s.run.stage, "method": s.name,
                          "seed": s.run.meta.get("seed"), "state": s.state,
                          "run": str(s.run.path), "job": s.manifest, "detail": s.detail,
                          "stack": [str(p) for p in s.stack]})


__all__ = ["STATES", "RunState", "format_report", "remove", "rerun", "survey", "to_redo"]
