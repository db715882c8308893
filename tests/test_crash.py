"""Kill the workflow at several points and check that the README's recovery steps give the
results of an uninterrupted run.

Everything runs in a `git clone` of the committed project with its own code
(PYTHONPATH=<clone>/src), so these tests check the committed tree: commit before running
them locally. Snakemake runs in a session of its own and is killed with SIGKILL to its whole
process group (what a crashed node or a `kill -9` does: no cleanup runs), polled every 5 ms.
Two sequences run side by side:

- the README's, in the clone from nothing: the command is killed when a training job starts;
  then, following the README's recovery steps verbatim (the fenced block after
  `<!-- recovery-steps -->`, its last line the command itself), killed again the moment the
  training job has written its output (before Snakemake records it as finished: the state
  where a plain `snakemake` stops with IncompleteFilesException) and the moment `report` has
  written report.md; then the steps once more, to the end;
- over finished results, as when a changed grid reruns the analysis (a copy of the
  uninterrupted reference): `--forcerun aggregate` killed during `aggregate` (Snakemake has
  deleted the old tables when the job starts, while the old report is still there: the
  state where a rerun used to say "Nothing to be done" and leave the tables missing), then a
  plain run killed during `report`, each followed by `snakemake --unlock`.

Each recovery must redo the job that was cut off and, of the jobs whose outputs were there
at the kill, only those the killed run had not finished (finished jobs are not redone; a
finished training run is reused), and the end must equal the uninterrupted run: every run directory with the same files, its model, mask, init and description files
bit-identical, its metrics and history equal but for timings; the tables (runs.csv and
summary.csv without the timing columns), report.md (without the benchmark's timing cells)
and the set of figures equal; and a further run finds nothing to do.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml
from projectutil import copy_workflow_files

pytest.importorskip("snakemake", reason="the workflow extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: snakemake and prunebench
STUDY = "tiny"
TINY = {
    "scale": "default",
    "runs_root": "results/runs",
    "studies": {STUDY: {
        "data": {"name": "digits", "val_size": 0.1},
        "model": {"name": "mlp_digits"},
        "train": {"epochs": 1, "lr": 0.05, "batch_size": 64},
        "finetune": {"epochs": 1, "lr": 0.01},
        "methods": {"global_magnitude": {}},
        "sparsities": [0.5],
        "recover": ["finetune"],
        "benchmark": {"batch_sizes": [1], "min_time_s": 0.01, "modes": ["dense"]},
        "seeds": [0],
    }},
}
STUDY_DIR = f"results/studies/{STUDY}"
TABLES = ("runs.csv", "summary.csv")
LOGS = f"results/logs/{STUDY}"
# Measured, not computed: these differ between any two runs.
TIMING = re.compile(r"latency|throughput|speedup|memory|energy|_time_s")
NOTHING_TO_DO = "Nothing to be done"
RECOVERY_MARKER = "<!-- recovery-steps"
# A run's files holding measurements: metrics and history are compared without their
# timings, the others (and the resume checkpoints) only by name.
MEASURED = {"metrics.json", "history.csv", "log.txt", "benchmark.json", "checksums.json"}


def recovery_steps(readme: Path) -> list[str]:
    """The command lines of the fenced block that follows the marker comment in README.md."""
    text = readme.read_text()
    assert RECOVERY_MARKER in text, f"{readme} has no {RECOVERY_MARKER} block"
    block = re.search(r"```[a-z]*\n(.*?)```", text[text.index(RECOVERY_MARKER):], re.S)
    assert block, f"no fenced block after {RECOVERY_MARKER} in {readme}"
    return [line for line in block.group(1).splitlines() if line.strip()]


def copy_workflow(source: Path, dest: Path) -> Path:
    copy_workflow_files(dest, source)
    (dest / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    return dest


def run_ok(cwd: Path, env: dict, command: str) -> str:
    """Run a command line as a user types it (bash), to the end; what it printed."""
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, f"{command} exited {proc.returncode}:\n{proc.stdout[-4000:]}"
    return proc.stdout


@dataclass
class Job:
    """One job a Snakemake run started, as it printed it."""

    rule: str
    jobid: str
    output: tuple[str, ...]
    log: str
    reason: str


def started_jobs(output: str) -> list[Job]:
    jobs = []
    for rule, body in re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n?)*)", output, re.M):
        fields = dict(re.findall(r"^    (\w+): (.*)$", body, re.M))
        jobs.append(Job(rule, fields.get("jobid", ""), tuple(fields.get("output", "").split(", ")),
                        fields.get("log", ""), fields.get("reason", "")))
    return jobs


def finished_jobids(output: str) -> set[str]:
    """Snakemake prints this once it has recorded the job as finished."""
    return set(re.findall(r"^Finished jobid: (\d+)", output, re.M))


@dataclass
class Kill:
    """One kill: the file whose appearance triggered it ("" if Snakemake ended first, and
    was not killed), the paths under results/ then, and what that run of Snakemake
    printed."""

    point: str
    trigger: str
    paths_then: set[str] = field(default_factory=set)
    output: str = ""
    server: int | None = None  # the job server it started, which must go by itself

    def settle(self) -> None:
        """Wait for the job server to go (it kills its jobs when Snakemake dies): call
        before the workflow runs again. Unlocking may go on meanwhile."""
        if self.server is not None:
            _wait_gone(self.server)

    def triggered_by(self, job: Job) -> bool:
        return self.trigger in (job.log, *job.output)

    def interrupted(self) -> list[tuple[str, ...]]:
        """The outputs of the jobs that this run started and had not finished."""
        done = finished_jobids(self.output)
        return [job.output for job in started_jobs(self.output) if job.jobid not in done]


def _server_pid(cwd: Path) -> int | None:
    """The job server the killed Snakemake started (prunebench.launcher), if any."""
    log = cwd / ".snakemake/log/prunebench-server.log"
    pids = re.findall(r"\(pid (\d+)\)", log.read_text()) if log.is_file() else []
    return int(pids[-1]) if pids else None


def _wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"the job server {pid} outlived its Snakemake by {timeout:.0f} s")


def kill_when_written(cwd: Path, env: dict, point: str, pattern: str, command: str) -> Kill:
    """Run `command` in a session of its own and SIGKILL its process group as soon as a
    file matching `pattern` is (re)written."""
    server_before = _server_pid(cwd)
    output = cwd.parent / f"{cwd.name}-{point}.out"
    started = time.time_ns()
    with open(output, "w") as out:
        proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    hit = ""
    try:
        while not hit and proc.poll() is None:
            for path in glob.glob(str(cwd / pattern), recursive=True):
                try:
                    if os.stat(path).st_mtime_ns >= started:
                        hit = str(Path(path).relative_to(cwd))
                except FileNotFoundError:  # a temporary file renamed meanwhile
                    pass
            time.sleep(0.005)
        if hit:
            os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()  # reaped: the server watches this pid
    paths = {str(p.relative_to(cwd)) for p in (cwd / "results").rglob("*")}
    server = _server_pid(cwd)
    return Kill(point, hit, paths, output.read_text(),
                server if server != server_before else None)


@dataclass
class Sequence:
    """A workflow killed at `kills` (each followed by the recovery), run to the end
    (`final`), then asked again (`again`, a dry run)."""

    work: Path
    kills: list[Kill]
    final: str
    again: str
    steps: list[str] = field(default_factory=list)  # the README's recovery steps
    trained: dict[str, int] = field(default_factory=dict)  # model.pt: its mtime at the kill


# The README's sequence: (point, the file whose (re)writing triggers the kill).
README_KILLS = [
    ("train", f"{LOGS}/train/**/*.log"),                    # a training job started
    ("train_written", f"results/jobs/{STUDY}/train/**/*.json"),  # ... and wrote its output
    ("report_written", f"{STUDY_DIR}/report.md"),
]


def follow_the_readme(work: Path, env: dict) -> Sequence:
    """The clone, from nothing: the README's command killed, then the README's recovery
    steps, whose last line (the command again) is killed at the next point."""
    steps = recovery_steps(work / "README.md")
    kills, trained = [], {}
    for point, pattern in README_KILLS:
        if kills:
            for step in steps[:-1]:
                run_ok(work, env, step)
            kills[-1].settle()
        kills.append(kill_when_written(work, env, point, pattern, steps[-1]))
        assert kills[-1].trigger, f"{steps[-1]} ended before {point}:\n{kills[-1].output[-3000:]}"
        if point == "train_written":  # the run that training wrote: kept, not redone?
            models = glob.glob(str(work / "results/runs/train/*/model.pt"))
            trained = {p: os.stat(p).st_mtime_ns for p in models}
    for step in steps[:-1]:
        run_ok(work, env, step)
    kills[-1].settle()
    final = run_ok(work, env, steps[-1])
    again = run_ok(work, env, "snakemake -n")
    return Sequence(work, kills, final, again, steps, trained)


def over_finished_results(reference: Path, work: Path, env: dict) -> Sequence:
    shutil.copytree(reference, work, symlinks=True)  # keeps Snakemake's metadata and mtimes
    kills = []
    for point, pattern, command in [
            ("aggregate", f"{LOGS}/aggregate.log", "snakemake --cores 2 --forcerun aggregate"),
            ("report", f"{LOGS}/report.log", "snakemake --cores 2")]:
        kills.append(kill_when_written(work, env, point, pattern, command))
        run_ok(work, env, "snakemake --unlock")
        kills[-1].settle()
    final = run_ok(work, env, "snakemake --cores 2")
    return Sequence(work, kills, final, run_ok(work, env, "snakemake -n"))


@dataclass
class Builds:
    reference: Path
    sequences: dict[str, Sequence]


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> Builds:
    """A clone of the committed project; the uninterrupted reference and both killed
    sequences: the README's runs in the clone beside the reference build, the other starts
    from a copy of the reference."""
    base = tmp_path_factory.mktemp("crash")
    clone = base / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=300)
    (clone / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(clone / "src")}
    sequences: dict[str, Sequence] = {}
    errors: list[BaseException] = []

    def in_thread():
        try:
            sequences["readme"] = follow_the_readme(clone, env)
        except BaseException as err:  # noqa: BLE001 (re-raised below, in the test's thread)
            errors.append(err)

    thread = threading.Thread(target=in_thread)
    thread.start()
    try:
        reference = copy_workflow(clone, base / "reference")
        run_ok(reference, env, "snakemake --cores 2")
        sequences["over_finished"] = over_finished_results(reference, base / "over_finished",
                                                           env)
    finally:
        thread.join()
    if errors:
        raise errors[0]
    return Builds(reference, sequences)


# ------------------------------------------------------------------------- comparing


def table(root: Path, name: str) -> pd.DataFrame:
    df = pd.read_csv(root / STUDY_DIR / name)
    return df[[c for c in df.columns if not TIMING.search(c)]]


def report_text(root: Path) -> str:
    """report.md with the benchmark tables' measured cells dropped (their rows keep the
    method and target)."""
    lines, benchmark_section = [], False
    for line in (root / STUDY_DIR / "report.md").read_text().splitlines():
        if line.startswith("#"):
            benchmark_section = "benchmark" in line.lower()
        if benchmark_section and line.startswith("|"):
            line = "|".join(line.split("|")[:3])
        lines.append(line)
    return "\n".join(lines)


def figures(root: Path) -> set[str]:
    found = set()
    for path in (root / "results/plots").glob(f"{STUDY}_*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        found.add(path.name)
    return found


def run_files(root: Path) -> dict[str, str]:
    """Every file of every run directory: its SHA-256, or for a file with measurements
    (metrics, history) its content without them; logs, checksums and the resume checkpoints
    only by name (they hold timings)."""
    runs = root / "results/runs"
    found = {}
    for path in sorted(p for p in runs.rglob("*") if p.is_file()):
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue  # a job killed inside an atomic write leaves its temp file, never read
        name = str(path.relative_to(runs))
        if path.name == "metrics.json":
            metrics = json.loads(path.read_text())
            found[name] = json.dumps({k: v for k, v in metrics.items() if not TIMING.search(k)},
                                     sort_keys=True)
        elif path.name == "history.csv":
            history = pd.read_csv(path)
            found[name] = history[[c for c in history.columns if not TIMING.search(c)]].to_csv()
        elif path.name in MEASURED or path.parent.name == "checkpoints":
            found[name] = "(measured)"
        else:
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_same_results(root: Path, reference: Path) -> None:
    files, expected = run_files(root), run_files(reference)
    assert files.keys() == expected.keys()
    assert any(name.endswith("model.pt") for name in files)
    for name, digest in expected.items():
        assert files[name] == digest, f"results/runs/{name} differs from the uninterrupted run's"
    for name in TABLES:
        pd.testing.assert_frame_equal(table(root, name), table(reference, name))
    assert report_text(root) == report_text(reference)
    assert figures(root) == figures(reference)


def assert_reruns_only_what_was_cut_off(kill: Kill, rerun: str) -> list[Job]:
    """The run after `kill` (its output `rerun`) started the job whose file triggered the
    kill, and among the jobs whose outputs were all there at the kill, redid only those the
    killed run had started and not finished (or whose inputs it redid): finished jobs are not
    redone. Returns the redone jobs whose outputs were there."""
    jobs = started_jobs(rerun)
    assert any(kill.triggered_by(job) for job in jobs), f"the {kill.point} job was not redone"
    interrupted = kill.interrupted()
    assert any(kill.triggered_by(job) for job in started_jobs(kill.output)
               if job.output in interrupted)
    redone = [job for job in jobs if set(job.output) <= kill.paths_then
              and "updated by another job" not in job.reason]
    finished = [job.rule for job in redone if job.output not in interrupted]
    assert not finished, f"after the kill at {kill.point}, finished jobs were redone: {finished}"
    return redone


# ------------------------------------------------------------------------- the tests


def test_the_reference_has_the_study_results(builds):
    assert len(table(builds.reference, "runs.csv")) == 2  # dense and global_magnitude
    assert len(figures(builds.reference)) >= 5
    assert "## tiny" in report_text(builds.reference)


def test_the_readme_recovery_after_kills_during_and_after_jobs_gives_the_same_results(builds):
    sequence = builds.sequences["readme"]
    steps = sequence.steps
    assert steps[0] == "snakemake --unlock" and steps[-1].split("#")[0].split() == [
        "snakemake", "--cores", "2"]  # the test's command; no flag added for the recovery
    assert len({kill.point for kill in sequence.kills}) == len(README_KILLS)
    train, train_written, report_written = sequence.kills
    assert train.trigger.startswith(f"{LOGS}/train/")
    assert train_written.trigger.startswith(f"results/jobs/{STUDY}/train/")
    assert report_written.trigger == f"{STUDY_DIR}/report.md"
    reruns = [k.output for k in sequence.kills[1:]] + [sequence.final]
    for kill, rerun in zip(sequence.kills, reruns):
        redone = assert_reruns_only_what_was_cut_off(kill, rerun)
        if kill.point.endswith("_written"):
            # Its output was there, marked incomplete: Snakemake without the profile's
            # rerun-incomplete stops with IncompleteFilesException; with it, it redoes the job.
            rule = kill.point.removesuffix("_written")
            assert rule in [job.rule for job in redone], (
                f"the {rule} job whose output was there was not redone: the kill came after "
                f"Snakemake had recorded it as finished (5 ms polls missed the window)")
            assert all("Forced execution" in job.reason for job in redone)
    # The training run the killed job had finished was reused, not trained again:
    assert sequence.trained and all(
        os.stat(path).st_mtime_ns == mtime for path, mtime in sequence.trained.items())
    assert_same_results(sequence.work, builds.reference)
    assert NOTHING_TO_DO in sequence.again


def test_killed_during_aggregate_over_old_results_then_rerun_redoes_the_tables(builds):
    """The bug this guards against: the old report.md survives a kill during `aggregate`,
    whose tables Snakemake deleted, and a rerun that only asks for the report finds nothing
    to do. The tables must be targets of their own."""
    sequence = builds.sequences["over_finished"]
    aggregate, report = sequence.kills
    assert aggregate.trigger == f"{LOGS}/aggregate.log"
    assert f"{STUDY_DIR}/report.md" in aggregate.paths_then  # the old report is still there ...
    assert not {f"{STUDY_DIR}/{t}" for t in TABLES} <= aggregate.paths_then  # ... the tables
    # are not: the window hit. The run after it redid the tables (and the figures) before it
    # reached the report:
    assert NOTHING_TO_DO not in report.output, "the rerun left the tables missing"
    assert "rule aggregate:" in report.output and report.trigger == f"{LOGS}/report.log"
    assert_reruns_only_what_was_cut_off(aggregate, report.output)
    assert {f"{STUDY_DIR}/{t}" for t in TABLES} <= report.paths_then
    assert f"{STUDY_DIR}/report.md" not in report.paths_then
    assert "rule report:" in sequence.final
    assert_reruns_only_what_was_cut_off(report, sequence.final)
    assert_same_results(sequence.work, builds.reference)
    assert NOTHING_TO_DO in sequence.again
