"""Out of room: a real `prunebench train` of a tiny study whose writes fail, as on a full
disk or quota, must end with one line naming the file, the error and the free space, exit
non-zero, and leave nothing half-written (no temp file, no unfinished run directory).

Two ways to run out, both for real (no mock):
- the file size limit (`ulimit -f`, RLIMIT_FSIZE, with SIGXFSZ ignored so that a write fails
  with EFBIG, as it does past a quota) set in the child process;
- a 160 KiB tmpfs mounted on the study's results/ in a mount namespace of the child's own
  (`unshare --mount`: the mount is gone when the child exits), for a true ENOSPC; skipped
  where mounting is not permitted.
The training writes init.pt (72 KB), then, after its epoch, checkpoints/last.pt (148 KB):
both limits let the first through and stop the second, so no checkpoint is left to resume
from and the run directory must be gone.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PARAMS = {
    "runs_root": "results/runs",
    "studies": {"tiny": {
        "data": {"name": "digits", "val_size": 0.1},
        "model": {"name": "mlp_digits"},
        "train": {"epochs": 1, "lr": 0.05, "batch_size": 64},
        "methods": {"global_magnitude": {}},
        "sparsities": [0.5],
        "seeds": [0],
    }},
}
TRAIN = [str(BIN / "prunebench"), "train", "--params", "params.yaml", "--study", "tiny",
         "--no-progress"]
ERROR = re.compile(r"prunebench: error: cannot write (results/runs/train/[0-9a-f]+/\S+): "
                   r"(.+) \(errno (\d+)\); \d+(\.\d)? (B|KiB|MiB|GiB|TiB) free on (/\S*?)"
                   r"(; file size limit .+)?")
FSIZE_LIMIT = 100_000  # bytes: more than init.pt, less than checkpoints/last.pt


@pytest.fixture(scope="module")
def env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"),
           # A write past the limit can cut a .pyc short without an error: write none.
           "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PRUNEBENCH_SERVER", None)  # this process, not a workflow's job server
    return env


@pytest.fixture(scope="module")
def primed(tmp_path_factory, env) -> Path:
    """A project with the digits cache already made (data/), so only the run's files are
    written under the limits."""
    project = tmp_path_factory.mktemp("full") / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    subprocess.run([str(BIN / "prunebench"), "data", "--params", "params.yaml", "--study",
                    "tiny", "--no-progress"], cwd=project, env=env, check=True,
                   capture_output=True, timeout=300)
    return project


def project_copy(primed: Path, dest: Path) -> Path:
    shutil.copytree(primed, dest)
    (dest / "results").mkdir()
    return dest


def assert_one_line_and_nothing_left(proc: subprocess.CompletedProcess, results: list[str],
                                     errno_: int, mount: str) -> re.Match:
    """`results`: every path under the project's results/ after the failure."""
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("prunebench: error")]
    assert len(errors) == 1, proc.stderr
    match = ERROR.fullmatch(errors[0])
    assert match, errors[0]
    assert int(match[3]) == errno_ and match[2] == os.strerror(errno_)
    assert match[6] == mount
    assert "results/runs/train" in results, results  # the run was begun ...
    assert match[1] not in results  # ... the file named was never written,
    assert not [p for p in results if p.endswith(".tmp")], results  # nor kept half-written,
    assert not [p for p in results if p.startswith("results/runs/train/")], results  # and
    return match  # no unfinished run directory is left


def test_past_the_file_size_limit_a_training_fails_with_one_line(primed, tmp_path, env):
    project = project_copy(primed, tmp_path / "project")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))

    proc = subprocess.run(TRAIN, cwd=project, env=env, capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)
    results = [str(p.relative_to(project)) for p in (project / "results").rglob("*")]
    mount = project.resolve()
    while not os.path.ismount(mount):
        mount = mount.parent
    match = assert_one_line_and_nothing_left(proc, results, 27, str(mount))  # EFBIG
    assert match[1].endswith("/checkpoints/last.pt")
    assert match[7] == f"; file size limit {FSIZE_LIMIT / 1024:.1f} KiB"


def test_on_a_full_file_system_a_training_fails_with_one_line(primed, tmp_path, env):
    project = project_copy(primed, tmp_path / "project")
    mount = "mount -t tmpfs -o size=160k tmpfs results"
    unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
    probe = subprocess.run([*unshare, mount], cwd=project, capture_output=True, text=True,
                           timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.strip()}")
    # The tmpfs lives as long as the shell: it lists what the training left there.
    proc = subprocess.run(
        [*unshare, f"{mount} && {' '.join(TRAIN)}; status=$?; find results > ../listing.txt; "
                   "exit $status"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300)
    results = (project.parent / "listing.txt").read_text().split()
    match = assert_one_line_and_nothing_left(proc, results, 28, str(project / "results"))
    assert match[1].endswith("/checkpoints/last.pt") and match[7] is None
