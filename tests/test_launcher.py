"""The job server (prunebench.launcher): a job forked from it behaves like a fresh process:
same results bit for bit, its own stdio and exit status, and it dies with its client."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from prunebench import launcher

PROMPT = [sys.executable, "-c", "from prunebench.launcher import main; raise SystemExit(main())"]
PARAMS = {
    "runs_root": "runs",
    "studies": {"tiny": {
        "data": {"name": "digits", "val_size": 0.1},
        "model": {"name": "mlp_digits"},
        "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "epochs": 2, "batch_size": 64},
        "methods": {"global_magnitude": {}},
        "sparsities": [0.5],
        "seeds": [0],
    }},
}


@pytest.fixture
def server(tmp_path):
    """A job server on a socket in tmp_path, stopped (and checked gone) afterwards."""
    path = str(tmp_path / "s.sock")
    pid = launcher.start_server(path, parent=os.getpid(), log_path=str(tmp_path / "server.log"))
    yield path
    launcher.stop_server(pid)
    for _ in range(100):
        if not os.path.exists(path):
            break
        time.sleep(0.05)
    assert not os.path.exists(path), "the server did not remove its socket"


def prunebench(cwd: Path, *args: str, server: str | None = None, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != launcher.ENV_SERVER}
    if server:
        env[launcher.ENV_SERVER] = server
    return subprocess.run([*PROMPT, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, **kwargs)


def digests(root: Path) -> dict[str, str]:
    """The weights a run saved (init and final; the resume checkpoint also holds timings)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.pt")) if "checkpoints" not in p.parts}


def test_a_job_forked_from_the_server_equals_a_fresh_process(tmp_path, server):
    results = {}
    for name, via in (("direct", None), ("server", server)):
        work = tmp_path / name
        work.mkdir()
        (work / "params.yaml").write_text(yaml.safe_dump(PARAMS))
        proc = prunebench(work, "train", "--no-progress", "--manifest", "m.json", server=via)
        assert proc.returncode == 0, proc.stderr
        manifest = json.loads((work / "m.json").read_text())
        assert manifest["launcher"] == name
        # The job's stdout and stderr are its client's: the run's JSON line and its log.
        assert json.loads(proc.stdout.splitlines()[-1])["label"] == "dense"
        assert "prunebench" in proc.stderr
        metrics = json.loads(next((work / "runs").rglob("metrics.json")).read_text())
        results[name] = (digests(work / "runs"), metrics["top1"], metrics["history"][-1]["loss"]
                         if "history" in metrics else None)
    assert len(results["direct"][0]) == 2 and results["direct"] == results["server"]


def test_exit_status_and_errors_come_back_from_the_child(tmp_path, server):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    proc = prunebench(tmp_path, "train", "--set", "train.epochs=-1", server=server)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("prunebench: error:") and "epochs" in proc.stderr
    proc = prunebench(tmp_path, "no-such-verb", server=server)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_without_a_server_the_command_runs_itself(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    gone = str(tmp_path / "nobody.sock")
    proc = prunebench(tmp_path, "plan", server=gone)
    assert proc.returncode == 0 and '"stage": "train"' in proc.stdout


def test_a_cancelled_client_takes_its_job_with_it(tmp_path, server):
    """Snakemake cancels a job by killing its process: the forked child must not live on."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {**PARAMS, "studies": {"tiny": {**PARAMS["studies"]["tiny"],
                                         "train": {"epochs": 500, "batch_size": 8}}}}))
    env = {**os.environ, launcher.ENV_SERVER: server}
    client = subprocess.Popen([*PROMPT, "train", "--no-progress"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    child = None
    deadline = time.monotonic() + 60
    while child is None and time.monotonic() < deadline:
        child = _child_of_server(server)
        time.sleep(0.1)
    assert child is not None, "no job was forked"
    client.send_signal(signal.SIGKILL)
    client.wait()
    for _ in range(100):
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child), "the job outlived its client"


def _child_of_server(sock: str) -> int | None:
    import psutil

    for proc in psutil.process_iter(["cmdline", "pid"]):
        cmd = proc.info["cmdline"] or []
        if "serve" in cmd and sock in cmd:
            kids = proc.children()
            return kids[0].pid if kids else None
    return None


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
