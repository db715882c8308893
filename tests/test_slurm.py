"""The SLURM profile against a real scheduler: a one-node SLURM on this machine.

`scripts/slurm_local.sh` installs Debian's slurm-wlm and munge (apt) and starts munged,
slurmctld and slurmd as root, all state in a private directory; the daemons are stopped at
the end. Three runs of one tiny study go at once (they mostly wait on the scheduler):

* local: `snakemake --cores 2` with the default workflow profile, the reference;
* slurm: `snakemake --profile workflow/profiles/slurm` through
  snakemake-executor-plugin-slurm, the profile's few top settings edited as a cluster user
  would (no GPU, the local partition, small memory) and nothing else;
* failing: the same, with `runs_root` pointing at a file, so its first SLURM job fails.

Needs root and apt (CI: `.ci/run` installs SLURM first and sets PRUNEBENCH_REQUIRE_SLURM=1 so
that this cannot skip there). Skipped otherwise, and with PRUNEBENCH_SKIP_SLURM=1.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from projectutil import copy_workflow_files

pytest.importorskip("snakemake", reason="the workflow extra is not installed")
pytest.importorskip("snakemake_executor_plugin_slurm",
                    reason="snakemake-executor-plugin-slurm (the workflow extra) is not installed")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts/slurm_local.sh"
BIN = Path(sys.executable).parent  # the venv's bin: snakemake and prunebench
PARTITION = "ci"
THREADS = 1
STUDY = {
    "scale": "default",
    "runs_root": "results/runs",
    "studies": {
        "tiny": {
            "data": {"name": "digits", "val_size": 0.1},
            "model": {"name": "mlp_digits"},
            "train": {"optimizer": "sgd", "lr": 0.05, "epochs": 2, "batch_size": 64},
            "finetune": {"epochs": 1, "lr": 0.01},
            "methods": {"global_magnitude": {}},
            "sparsities": [0.5],
            "recover": ["finetune"],
            "benchmark": {"batch_sizes": [1], "min_time_s": 0.01},
            "seeds": [0],
            "threads": THREADS,
        }
    },
}
# The runs go `--until finetune`: the local download, then train -> prune -> finetune, one
# SLURM job each (the benchmark and analysis rules add time, not coverage: every stage rule
# is built alike, and test_workflow runs the whole DAG).
UNTIL = ["--until", "finetune"]
SLURM_JOBS = {"train": 1, "prune": 1, "finetune": 1}
# The bring-your-own run stops after prune: train uses the user's model file and the plugin's
# dataset, prune the plugin's method; both are SLURM jobs that must import the plugin.
BYO_UNTIL = ["--until", "prune"]
BYO_SLURM_JOBS = {"train": 1, "prune": 1}
# Of the executor plugin's options, those for a cluster without slurmdbd (`sacct` has no
# data: job states come from squeue, which keeps finished jobs for MinJobAge = 900 s) and a
# short first status check (the default 40 s would double the test's time).
CLUSTER_ARGS = ["--slurm-status-command", "squeue",
                "--slurm-init-seconds-before-status-checks", "2"]
RUN_TIMEOUT = 600


def _skip_or_fail(reason: str):
    if os.environ.get("PRUNEBENCH_REQUIRE_SLURM") == "1":
        pytest.fail(f"PRUNEBENCH_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def _free_port_pair() -> int:
    """A port P with P and P + 1 free (slurmctld, slurmd): away from a real SLURM's 6817."""
    for _ in range(50):
        port = random.randrange(20000, 60000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("", port))
                b.bind(("", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free pair of ports")


def _script(state: Path, *args: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), "--dir", str(state), *args], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running one-node SLURM; yields (state dir, environment for its clients)."""
    if os.environ.get("PRUNEBENCH_SKIP_SLURM") == "1":
        pytest.skip("PRUNEBENCH_SKIP_SLURM=1")
    if os.geteuid() != 0:
        _skip_or_fail("the local SLURM runs its daemons as root (run as root, or in CI)")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "PRUNEBENCH_SLURM_PARTITION": PARTITION,
           "PRUNEBENCH_SLURM_PORT": str(_free_port_pair())}
    t0 = time.monotonic()
    installed = _script(state, "install", env=env)
    if installed.returncode != 0:
        _skip_or_fail(f"cannot install SLURM (slurm-wlm, munge) with apt:\n{installed.stdout[-2000:]}")
    install_s = time.monotonic() - t0
    try:
        started = _script(state, "start", env=env, timeout=120)
        assert started.returncode == 0, f"the local SLURM did not start:\n{started.stdout}" + \
            "".join(f"\n--- {log.name}:\n{log.read_text()[-3000:]}"
                    for log in sorted((state / "log").glob("*.log")))
        print(f"\nslurm: install {install_s:.0f} s, start {time.monotonic() - t0 - install_s:.0f} s")
        client_env = {
            **os.environ,
            "SLURM_CONF": str(state / "slurm.conf"),
            # The script's client wrappers first: the srun inside a job must find this
            # cluster although the jobstep plugin drops SLURM_CONF (see the script).
            "PATH": os.pathsep.join([str(state / "bin"), str(BIN), os.environ.get("PATH", "")]),
        }
        yield state, client_env
    finally:
        stopped = _script(state, "stop", env=env, timeout=120)
        assert stopped.returncode == 0, stopped.stdout
        assert "running" not in _script(state, "status", env=env).stdout


def copy_workflow(dest: Path, study: dict = STUDY) -> Path:
    copy_workflow_files(dest)
    (dest / "params.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return dest


def byo_study() -> dict:
    """The bring-your-own example (examples/byo: the user's model file, an image folder and
    the plugin's own method), cut to one job per stage (run until prune): its plugin must be
    imported by the SLURM jobs themselves, on the compute side."""
    params = yaml.safe_load((ROOT / "examples/byo/params.yaml").read_text())
    study = params["studies"]["byo"]
    study.update(methods={"taylor": {}}, sparsities=[0.5], seeds=[0], threads=THREADS,
                 train={**study["train"], "epochs": 1}, finetune={"epochs": 1, "lr": 0.01})
    return params


def copy_byo(dest: Path) -> Path:
    copy_workflow(dest, byo_study())
    shutil.copytree(ROOT / "examples", dest / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "examples/byo/make_data.py", "--train", "30", "--test",
                    "10"], cwd=dest, check=True, capture_output=True, timeout=120)
    return dest


def fit_profile(work: Path, mem_mb: int) -> dict:
    """Edit the copy's SLURM profile the way the profile asks a cluster user to: its top
    settings only (no GPUs, the partition, memory per job). Returns the edited profile."""
    path = work / "workflow/profiles/slurm/config.yaml"
    profile = yaml.safe_load(path.read_text())
    original = json.loads(json.dumps(profile))
    profile["config"]["gpus_per_job"] = 0
    profile["default-resources"]["slurm_partition"] = PARTITION
    profile["default-resources"]["mem_mb"] = mem_mb
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    # nothing else changed: no rule, no set-resources, no thread count
    assert {k: v for k, v in profile.items() if k not in ("config", "default-resources")} == \
        {k: v for k, v in original.items() if k not in ("config", "default-resources")}
    assert "set-resources" not in profile and "set-threads" not in profile
    return profile


def _run(cmd: list[str], cwd: Path, env: dict) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT)
    (cwd / "snakemake.out").write_text(proc.stdout)  # to read when a check fails
    return {"rc": proc.returncode, "out": proc.stdout, "seconds": time.monotonic() - t0,
            "cwd": cwd}


def _squeue(env: dict, run_id: str) -> dict[str, dict]:
    """The jobs SLURM knows under a Snakemake run's id (its sbatch --job-name)."""
    out = subprocess.run(["squeue", "--states=all", "--noheader", "--name", run_id,
                          "--format=%i|%T|%C|%P|%b|%N"], env=env, text=True, check=True,
                         capture_output=True, timeout=60).stdout
    keys = ("state", "cpus", "partition", "gres", "nodes")
    return {row.split("|")[0]: dict(zip(keys, row.split("|")[1:]))
            for row in out.splitlines() if row.strip()}


def submitted(out: str) -> dict[str, list[str]]:
    """SLURM job ids per rule, from the plugin's 'has been submitted' lines."""
    jobs: dict[str, list[str]] = {}
    for m in re.finditer(r"has been submitted with SLURM jobid (\d+) \(log: .*?/slurm_logs/"
                         r"rule_(\w+)/", out):
        jobs.setdefault(m.group(2), []).append(m.group(1))
    return jobs


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The local, SLURM and failing runs, at once; each: rc, out, seconds, cwd, and for the
    SLURM ones the run id and the squeue rows of its jobs."""
    state, env = cluster
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%c %m"], env=env, text=True, check=True,
                           capture_output=True).stdout.split()
    cpus, mem = int(sinfo[0]), int(sinfo[1])
    mem_mb = min(1000, mem // cpus)
    base = tmp_path_factory.mktemp("runs")
    local = copy_workflow(base / "local")
    slurm = copy_workflow(base / "slurm")
    fit_profile(slurm, mem_mb)
    failing = copy_workflow(base / "failing")
    fit_profile(failing, mem_mb)
    byo = copy_byo(base / "byo")
    fit_profile(byo, mem_mb)
    (failing / "blocked").write_text("a file where the runs directory should be\n")

    profile = ["snakemake", "--profile", "workflow/profiles/slurm", *CLUSTER_ARGS]
    commands = {
        "local": (["snakemake", "--cores", "2", "--workflow-profile", "workflow/profiles/default",
                   *UNTIL], local),
        "slurm": ([*profile, *UNTIL, "--verbose"], slurm),
        "failing": ([*profile, *UNTIL, "--config", "runs_root=blocked"], failing),
        "byo": ([*profile, *BYO_UNTIL], byo),
    }
    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {name: pool.submit(_run, cmd, cwd, env) for name, (cmd, cwd) in commands.items()}
        results = {name: f.result() for name, f in futures.items()}
    for name in ("slurm", "failing", "byo"):
        run_id = re.search(r"SLURM run ID: (\S+)", results[name]["out"])
        assert run_id, results[name]["out"][-4000:]
        results[name]["run_id"] = run_id.group(1)
        results[name]["squeue"] = _squeue(env, run_id.group(1))
    results["ctld_log"] = (state / "log/slurmctld.log").read_text()
    print("\n" + ", ".join(f"{n}: {r['seconds']:.0f} s" for n, r in results.items()
                           if isinstance(r, dict)))
    return results


def _tail(run: dict) -> str:
    return run["out"][-6000:]


def test_jobs_went_through_sbatch(runs):
    run = runs["slurm"]
    assert run["rc"] == 0, _tail(run)
    assert runs["local"]["rc"] == 0, _tail(runs["local"])
    jobs = submitted(run["out"])
    assert {rule: len(ids) for rule, ids in jobs.items()} == SLURM_JOBS, _tail(run)
    ids = [i for ids in jobs.values() for i in ids]
    # The scheduler ran each of them to completion on its node, in the profile's partition
    # with the study's thread count as CPUs and no GPU.
    assert set(run["squeue"]) == set(ids), run["squeue"]
    for job_id, job in run["squeue"].items():
        assert job["state"] == "COMPLETED", (job_id, job)
        assert job["partition"] == PARTITION and int(job["cpus"]) == THREADS, job
        assert "gpu" not in job["gres"], job
        assert re.search(rf"_slurm_rpc_submit_batch_job: JobId={job_id}\b", runs["ctld_log"])
    # The sbatch calls (logged with --verbose): the study's threads, no GPU option, no account.
    calls = re.findall(r"sbatch call: (sbatch .*)", run["out"])
    assert len(calls) == len(ids), calls
    for call in calls:
        assert f"--cpus-per-task={THREADS}" in call and f"-p {PARTITION}" in call, call
        assert "--gpus" not in call and "--gres" not in call and " -A " not in call, call
    # The download rule stayed local.
    assert "localrule download:" in run["out"]


def _results(work: Path) -> dict[str, dict]:
    """Per run directory: the checksums of its files (weights, masks, configs) and its
    metrics, less what holds wall times (history.csv has each epoch's duration; the
    metrics' *_time_s, and so metrics.json's own checksum; the metrics are compared
    without them, provenance included: the same code and environment)."""
    runs = {}
    for p in sorted((work / "results/runs").rglob("checksums.json")):
        files = {k: v for k, v in json.loads(p.read_text()).items()
                 if k not in ("history.csv", "metrics.json")}
        metrics = {k: v for k, v in json.loads((p.parent / "metrics.json").read_text()).items()
                   if not k.endswith("_time_s")}
        runs[str(p.parent.relative_to(work / "results/runs"))] = {"files": files,
                                                                  "metrics": metrics}
    return runs


def test_results_equal_a_local_run(runs):
    local, slurm = runs["local"], runs["slurm"]
    assert local["rc"] == 0 and slurm["rc"] == 0, _tail(local) + _tail(slurm)
    ours, theirs = _results(slurm["cwd"]), _results(local["cwd"])
    assert sorted({name.split("/")[0] for name in ours}) == ["prune", "recover", "train"]
    for run in ours.values():  # bit for bit: the same weights, the same top-1
        assert "model.pt" in run["files"] and "top1" in run["metrics"], run
        assert run["metrics"]["threads"] == THREADS
    assert ours == theirs


def test_failing_job_is_retried_and_reported(runs):
    run = runs["failing"]
    profile = yaml.safe_load((run["cwd"] / "workflow/profiles/slurm/config.yaml").read_text())
    attempts = 1 + profile["retries"]
    assert run["rc"] != 0, _tail(run)
    ids = submitted(run["out"])
    # train failed every time and nothing downstream was submitted
    assert list(ids) == ["train"] and len(set(ids["train"])) == attempts, _tail(run)
    for job_id in ids["train"]:
        assert run["squeue"][job_id]["state"] == "FAILED", run["squeue"]
        assert f"SLURM-job '{job_id}' failed, SLURM status is: 'FAILED'" in run["out"]
    assert run["out"].count("Trying to restart job") == attempts - 1
    assert "Exiting because a job execution failed" in run["out"]
    # The reason, from the rule's log that the job wrote on the shared filesystem, is shown
    # (the workflow profile's show-failed-logs).
    assert "NotADirectoryError: [Errno 20] Not a directory: 'blocked/train/" in run["out"]


def test_slurm_jobs_import_the_plugins_of_the_params(runs):
    """The example's plugin registers its dataset and method; each SLURM job (a fresh
    process on the node) imports it from the params file before it parses the study."""
    run = runs["byo"]
    assert run["rc"] == 0, _tail(run)
    jobs = submitted(run["out"])
    assert {rule: len(ids) for rule, ids in jobs.items()} == BYO_SLURM_JOBS, _tail(run)
    assert all(job["state"] == "COMPLETED" for job in run["squeue"].values()), run["squeue"]
    pruned = list((run["cwd"] / "results/runs/prune").glob("*/config.json"))
    assert len(pruned) == 1
    config = json.loads(pruned[0].read_text())
    assert config["method"] == "taylor" and config["dataset"] == "byo_shapes"
    assert set(config["config"]["plugin"]) == {"examples/byo/plugin.py"}
    assert config["model"] == "examples.byo.model:small_resnet"
