"""Kill the workflow at several points and check that `snakemake --unlock` and a rerun give
the results of an uninterrupted run.

Snakemake runs in a session of its own and is killed with SIGKILL to its whole process
group (what a crashed node or a `kill -9` does: no cleanup runs). The moment is the start of
a job, seen by its log file appearing under results/logs/<study>/ (the rule writes it first),
polled every 10 ms. Two sequences run side by side, each in its own copy of the workflow:

- from nothing: killed during a training job, then during `plot`, then run to the end;
- over finished results, as when a changed grid reruns the analysis: `--forcerun aggregate`
  killed during `aggregate` (Snakemake has deleted the old tables when the job starts, while
  the old report is still there: the state where a rerun used to say "Nothing to be done"
  and leave the tables missing), then a plain run killed during `report`.

After each kill: `snakemake --unlock`; after the last, a plain run to the end. The tables
(runs.csv and summary.csv without the timing columns), report.md (without the benchmark's
timing cells) and the set of figures must equal those of an uninterrupted run, and a further
run must find nothing to do.
"""

from __future__ import annotations

import glob
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

pytest.importorskip("snakemake", reason="the workflow extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: snakemake and prunebench
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
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


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True)
    if (ROOT / "Snakefile").is_file():  # the workflow's entry file, wherever it lives
        shutil.copy2(ROOT / "Snakefile", dest)
    shutil.copytree(ROOT / "workflow", dest / "workflow",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    return dest


def snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, env=ENV, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)


def run_to_the_end(cwd: Path) -> str:
    proc = snakemake(cwd, "--cores", "2")
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


@dataclass
class Kill:
    """One kill: the job whose log appeared ("" if Snakemake ended before it started, and
    was not killed), the study's files then, and what that run of Snakemake printed."""

    point: str
    log: str
    files_then: set[str] = field(default_factory=set)
    output: str = ""


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


def kill_when_started(cwd: Path, point: str, log_pattern: str, *args: str) -> Kill:
    """Run Snakemake in a session of its own, SIGKILL its process group as soon as a log
    matching `log_pattern` is (re)written, wait for the job server to go, then unlock."""
    server_before = _server_pid(cwd)
    output = cwd.parent / f"{cwd.name}-{point}.out"
    started = time.time_ns()
    with open(output, "w") as out:
        proc = subprocess.Popen([str(BIN / "snakemake"), "--cores", "2", *args], cwd=cwd,
                                env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    hit = ""
    try:
        while not hit and proc.poll() is None:
            hits = [p for p in glob.glob(str(cwd / log_pattern), recursive=True)
                    if os.stat(p).st_mtime_ns >= started]
            hit = str(Path(hits[0]).relative_to(cwd)) if hits else ""
            time.sleep(0.01)
        if hit:
            os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()  # reaped: the server watches this pid
    study_dir = cwd / STUDY_DIR
    kill = Kill(point, hit, {p.name for p in study_dir.glob("*")} if study_dir.is_dir() else set(),
                output.read_text())
    server = _server_pid(cwd)
    if server is not None and server != server_before:
        _wait_gone(server)
    unlock = snakemake(cwd, "--unlock")
    assert unlock.returncode == 0, unlock.stdout[-2000:]
    return kill


@dataclass
class Sequence:
    """A copy of the workflow killed at `kills`, then run to the end (`final`), then asked
    again (`again`, a dry run)."""

    work: Path
    kills: list[Kill]
    final: str
    again: str


def from_nothing(work: Path) -> Sequence:
    copy_workflow(work)
    kills = [kill_when_started(work, "train", f"{LOGS}/train/**/*.log"),
             kill_when_started(work, "plot", f"{LOGS}/plot.log")]
    return Sequence(work, kills, run_to_the_end(work), snakemake(work, "-n").stdout)


def over_finished_results(reference: Path, work: Path) -> Sequence:
    shutil.copytree(reference, work, symlinks=True)  # keeps Snakemake's metadata and mtimes
    kills = [kill_when_started(work, "aggregate", f"{LOGS}/aggregate.log",
                               "--forcerun", "aggregate"),
             kill_when_started(work, "report", f"{LOGS}/report.log")]
    return Sequence(work, kills, run_to_the_end(work), snakemake(work, "-n").stdout)


@dataclass
class Builds:
    reference: Path
    sequences: dict[str, Sequence]


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> Builds:
    """The uninterrupted reference and both killed sequences: the one from nothing runs
    beside the reference build, the other starts from a copy of it."""
    base = tmp_path_factory.mktemp("crash")
    sequences: dict[str, Sequence] = {}
    errors: list[BaseException] = []

    def in_thread():
        try:
            sequences["from_nothing"] = from_nothing(base / "from_nothing")
        except BaseException as err:  # noqa: BLE001 (re-raised below, in the test's thread)
            errors.append(err)

    thread = threading.Thread(target=in_thread)
    thread.start()
    try:
        reference = copy_workflow(base / "reference")
        run_to_the_end(reference)
        sequences["over_finished"] = over_finished_results(reference, base / "over_finished")
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


def assert_same_results(root: Path, reference: Path) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(table(root, name), table(reference, name))
    assert report_text(root) == report_text(reference)
    assert figures(root) == figures(reference)


# ------------------------------------------------------------------------- the tests


def test_the_reference_has_the_study_results(builds):
    assert len(table(builds.reference, "runs.csv")) == 2  # dense and global_magnitude
    assert len(figures(builds.reference)) >= 5
    assert "## tiny" in report_text(builds.reference)


def test_killed_during_training_and_plotting_then_rerun_gives_the_same_results(builds):
    sequence = builds.sequences["from_nothing"]
    train, plot = sequence.kills
    assert train.log.startswith(f"{LOGS}/train/") and "runs.csv" not in train.files_then
    assert plot.log == f"{LOGS}/plot.log" and "runs.csv" in plot.files_then
    assert "rule plot:" in sequence.final
    assert_same_results(sequence.work, builds.reference)
    assert NOTHING_TO_DO in sequence.again


def test_killed_during_aggregate_over_old_results_then_rerun_redoes_the_tables(builds):
    """The bug this guards against: the old report.md survives a kill during `aggregate`,
    whose tables Snakemake deleted, and a rerun that only asks for the report finds nothing
    to do. The tables must be targets of their own."""
    sequence = builds.sequences["over_finished"]
    aggregate, report = sequence.kills
    assert aggregate.log == f"{LOGS}/aggregate.log"
    assert "report.md" in aggregate.files_then  # the old report is still there ...
    assert not set(TABLES) <= aggregate.files_then  # ... the tables are not: the window hit
    # The run after it redid the tables (and the figures) before it reached the report:
    assert NOTHING_TO_DO not in report.output, "the rerun left the tables missing"
    assert "rule aggregate:" in report.output and report.log == f"{LOGS}/report.log"
    assert set(TABLES) <= report.files_then and "report.md" not in report.files_then
    assert "rule report:" in sequence.final
    assert_same_results(sequence.work, builds.reference)
    assert NOTHING_TO_DO in sequence.again
