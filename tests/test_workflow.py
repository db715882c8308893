"""The Snakemake workflow and its DVC stage, run for real on a tiny digits study, the way the
README says: plain `snakemake` from the project root, and `dvc repro` in a `git clone`.

One build is shared (a module fixture): a `git clone` of the committed project, its
params.yaml edited to the tiny study as a user would, then `dvc repro` (no `dvc init`: the
DVC metadata is committed). The clone runs its own code (PYTHONPATH=<clone>/src), so the
build tests the committed tree; commit before running these tests locally. Tests that change
something work on a copy of it (`shutil.copytree` keeps modification times and Snakemake's
metadata).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from prunebench.study import json_schema
from prunebench.analysis.names import PLOTS as PLOT_NAMES
from prunebench.plan import plan
from prunebench.stages import STAGES
from projectutil import copy_workflow_files

pytest.importorskip("snakemake", reason="the workflow extra is not installed")
pytest.importorskip("dvc", reason="the workflow extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: snakemake, dvc and prunebench
ENV = {
    **os.environ,
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    "DVC_NO_ANALYTICS": "1",
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
}
TINY = {
    "scale": "default",
    "runs_root": "results/runs",
    "studies": {
        "tiny": {
            "data": {"name": "digits", "val_size": 0.1},
            "model": {"name": "mlp_digits"},
            "train": {"optimizer": "sgd", "lr": 0.05, "epochs": 2, "batch_size": 64},
            "finetune": {"epochs": 1, "lr": 0.01},
            "methods": {
                "global_magnitude": {},
                "random": {"distribution": "uniform"},
                "lottery": {"prune_fraction": 0.5, "reinit_control": False},
            },
            "sparsities": [0.5, 0.8],
            "benchmark": {"batch_sizes": [1, 16], "min_time_s": 0.01},
            "seeds": [0],
        }
    },
}
RULE_FOR_STAGE = {stage: stage for stage in STAGES}
# TINY has an unstructured method, lottery tickets and training: every plot rule but the
# budgets' (PLOT_GROUPS)
ANALYSIS = ["aggregate", "plot", "plot_sparsity", "plot_curves", "plot_lottery", "report",
            "headline", "granularity", "page", "results_index"]
PLOTS = list(PLOT_NAMES)
NOTHING_TO_DO = "Nothing to be done"


def copy_workflow(dest: Path, params: dict = TINY) -> Path:
    """The workflow (Snakefile, workflow/, the profiles link) with `params` as params.yaml."""
    copy_workflow_files(dest)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None,
        ) -> subprocess.CompletedProcess:
    """Run a command with its stderr merged into `stdout`."""
    proc = subprocess.run(cmd, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc


def snakemake(cwd: Path, *args: str, check: bool = True) -> str:
    """Plain `snakemake` from the project root, as the README says; its output."""
    return run(["snakemake", *args], cwd, check, env=clone_env(cwd)).stdout


def clone_env(cwd: Path) -> dict:
    """The environment for commands in `cwd`: a clone of the project runs its own code."""
    if (cwd / "src/prunebench").is_dir():
        return {**ENV, "PYTHONPATH": str(cwd / "src")}
    return ENV


def planned_jobs(dry_run: str) -> list[tuple[str, str | None]]:
    """(rule, label wildcard) of every job a Snakemake dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule:
            label = re.search(r"wildcards:.*\blabel=(\w+)", block)
            jobs.append((rule.group(1), label.group(1) if label else None))
    return jobs


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Modification time and content hash of every file under `root`."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def copy_build(built: Path, dest: Path) -> Path:
    shutil.copytree(built, dest, symlinks=True)
    return dest


def git(cwd: Path, *args: str) -> str:
    return run(["git", *args], cwd).stdout


def dvc(cwd: Path, *args: str) -> str:
    return run(["dvc", *args], cwd, env=clone_env(cwd)).stdout


CACHED = ["results/data", "results/jobs", "results/runs", "results/logs", "results/benchmarks"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """`git clone` of the committed project, params.yaml set to the tiny study, `dvc repro`."""
    repo = tmp_path_factory.mktemp("build") / "prunebench"
    git(repo.parent, "clone", "-q", str(ROOT), str(repo))
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    git(repo, "commit", "-qam", "the tiny study")
    out = dvc(repo, "repro")
    assert "Running stage 'workflow'" in out, out
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "results")
    return repo


# ------------------------------------------------------------------------- no build needed


def test_committed_schema_is_the_generated_one():
    committed = json.loads((ROOT / "workflow/schemas/params.schema.json").read_text())
    regenerate = "prunebench schema > workflow/schemas/params.schema.json"
    assert committed == json_schema(), f"stale schema; regenerate it: {regenerate}"


def test_lint_is_clean(tmp_path):
    out = run(["snakemake", "--lint"], copy_workflow(tmp_path)).stdout
    assert "Congratulations, your workflow is in a good condition!" in out, out
    assert "Lints for" not in out


def test_dry_run_lists_the_whole_grid(tmp_path):
    out = snakemake(copy_workflow(tmp_path), "-n")
    jobs = Counter(rule for rule, _ in planned_jobs(out))
    expected = Counter(RULE_FOR_STAGE[j.stage] for j in plan(TINY))
    expected.update(["download", *ANALYSIS, "all"])
    assert jobs == expected


def test_a_study_gets_the_figures_it_declares_and_each_plot_rule_draws_its_outputs(tmp_path):
    """A structured-only study without lottery tickets: no sparsity-axis or lottery figure is
    asked for, and each plot rule's `--figures` are exactly its outputs."""
    params = json.loads(json.dumps(TINY))
    params["studies"]["tiny"]["methods"] = {"neuron_magnitude": {}}
    params["studies"]["tiny"]["channel_sparsities"] = [0.5]
    out = snakemake(copy_workflow(tmp_path, params), "-n", "-p")
    blocks = [b for b in re.split(r"\n(?=(?:local)?rule \w+:)", out)
              if re.match(r"(?:local)?rule plot\w*:", b)]
    assert sorted(re.match(r"(?:local)?rule (\w+):", b).group(1) for b in blocks) == [
        "plot", "plot_curves"]
    drawn = []
    for block in blocks:
        outputs = re.findall(r"results/plots/tiny_(\w+)\.png", re.search(r"output: (.+)",
                                                                        block).group(1))
        figures = re.search(r"--figures ([\w ]+?) >", block).group(1).split()
        assert outputs == figures
        drawn += outputs
    assert sorted(drawn) == sorted(["accuracy_vs_params", "accuracy_vs_macs", "pareto_macs",
                                    "pareto_latency", "training_curves"])
    assert "lottery_tickets" not in out and "accuracy_vs_sparsity" not in out


@pytest.mark.parametrize("edit, key", [
    (lambda s: s.update(bogus=1), "studies.tiny.bogus"),
    (lambda s: s.update(sparsities=[0.5, 1.5]), "studies.tiny.sparsities"),
])
def test_bad_params_fail_cleanly_naming_the_key(tmp_path, edit, key):
    params = json.loads(json.dumps(TINY))
    edit(params["studies"]["tiny"])
    work = copy_workflow(tmp_path, params)
    proc = run(["snakemake", "--cores", "2"], work, check=False)
    assert proc.returncode != 0
    assert "invalid params.yaml" in proc.stdout and key in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stdout
    assert not (work / "results").exists()


@pytest.mark.parametrize("args, gpu", [
    ((), 0),                                                     # CPU: no GPU asked for
    (("--resources", "gpu=2"), 1),                               # GPUs offered: one per job
    (("--resources", "gpu=2", "--config", "gpus_per_job=0"), 0),  # unless told otherwise
])
def test_stage_jobs_ask_for_a_gpu_only_where_gpus_are_offered(tmp_path, args, gpu):
    out = snakemake(copy_workflow(tmp_path), "-n", *args)
    blocks = [b for b in re.split(r"\n(?=(?:local)?rule )", out) if b.startswith("rule ")]
    stage_blocks = [b for b in blocks if re.match(r"rule (\w+):", b).group(1) in STAGES]
    assert stage_blocks
    for block in stage_blocks:
        assert f"gpu={gpu}," in block, block


def test_slurm_profile_resolves_the_resources(tmp_path):
    out = snakemake(copy_workflow(tmp_path), "--profile", "workflow/profiles/slurm", "-n")
    train = next(b for b in re.split(r"\n(?=rule )", out) if b.startswith("rule train:"))
    assert "slurm_partition=gpu" in train and "gpu=1" in train and "runtime=240" in train


# ------------------------------------------------------------------------- on the build
# The first of these pays for the build (~40 s on 2 cores), so all are marked slow.


@pytest.mark.slow
def test_tables_have_every_method_and_sparsity(built):
    out = built / "results/studies/tiny"
    with open(out / "runs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    points = Counter((r["label"], float(r["target_sparsity"])) for r in rows)
    expected = {("dense", 0.0)} | {
        (label, s) for label in ("global_magnitude", "random", "lottery") for s in (0.5, 0.8)
    }
    assert set(points) == expected and set(points.values()) == {1}
    for r in rows:
        assert float(r["weight_sparsity"]) == pytest.approx(float(r["target_sparsity"]), abs=0.01)
        assert 0.0 < float(r["top1"]) <= 1.0
    with open(out / "summary.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(expected)
    assert "tiny" in (out / "report.md").read_text()
    for plot in PLOTS:
        assert (built / f"results/plots/tiny_{plot}.png").stat().st_size > 0
    assert "top1" in (out / "metrics.json").read_text()
    granularity = json.loads((out / "granularity.json").read_text())
    # + download, aggregate, plot, report; every stage job forked from the local job server
    assert granularity["jobs"] == len(plan(TINY)) + 4
    assert granularity["launchers"] == {"server": len(plan(TINY))}
    assert 0.0 < granularity["startup_share"] < 1.0
    headline = {p.stem: json.loads(p.read_text())
                for p in (built / "results/headline/tiny").glob("*.json")}
    assert set(headline) == {"global_magnitude", "random", "lottery"}


@pytest.mark.slow
def test_every_job_writes_its_log_and_benchmark(built):
    for job in plan(TINY):
        stem = str(Path(job.manifest).relative_to("results/jobs")).removesuffix(".json")
        log = built / "results/logs" / f"{stem}.log"
        assert log.stat().st_size > 0, log
        assert (built / "results/benchmarks" / f"{stem}.tsv").is_file()


@pytest.mark.slow
def test_the_clone_has_the_promised_layout_and_plain_snakemake_applies_the_profile(built):
    """The top level a clone shows: a Snakefile as the entry point, workflow/ with the rules,
    profiles, schemas, scripts and env; plain `snakemake` from the root finds the default
    profile through the `profiles` link (its rerun triggers leave out modification times)."""
    for top in ("Snakefile", "workflow", "src", "params.yaml", "dvc.yaml", "results", "tests",
                "README.md"):
        assert (built / top).exists(), f"{top} is missing from the top level of a clone"
    assert not (built / "workflow" / "Snakefile").exists(), "two entry points"
    for sub in ("rules", "profiles", "schemas", "scripts", "envs"):
        assert (built / "workflow" / sub).is_dir(), f"workflow/{sub} is missing"
    assert (built / "profiles").is_symlink()
    assert (built / "profiles/default").resolve() == (built / "workflow/profiles/default").resolve()
    out = snakemake(built, "-n")
    assert "Using workflow specific profile profiles/default" in out, out[:2000]


def test_second_run_does_nothing(built):
    before = snapshot(built / "results")
    out = snakemake(built, "--cores", "2")
    assert NOTHING_TO_DO in out
    assert snapshot(built / "results") == before


@pytest.mark.slow
def test_new_timestamps_rerun_nothing(built, tmp_path):
    work = copy_build(built, tmp_path / "work")
    results = work / "results"
    now = time.time_ns()

    def set_mtime(subdirs, ns, root=results):
        for sub in subdirs:
            path = root / sub
            for f in [path] if path.is_file() else path.rglob("*"):
                os.utime(f, ns=(ns, ns))

    # Upstream files newer than everything downstream: Snakemake finds their checksums
    # unchanged in its metadata.
    set_mtime(["data", "jobs", "tables", "benchmarks", "metrics.json"], now + 60 * 10**9)
    assert NOTHING_TO_DO in snakemake(work, "-n")
    # Without the metadata (as in a fresh clone) the jobs still go by the hash in their
    # paths alone: their inputs are ancient().
    shutil.rmtree(work / ".snakemake")
    set_mtime(["."], now)
    set_mtime(["results"], now, root=work / "docs")  # the results pages, as the tables
    set_mtime(["data", "jobs"], now + 60 * 10**9)
    assert NOTHING_TO_DO in snakemake(work, "-n")


@pytest.mark.slow
def test_method_option_change_reruns_only_that_method(built, tmp_path):
    work = copy_build(built, tmp_path / "work")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["studies"]["tiny"]["methods"]["random"]["distribution"] = "global"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    jobs = Counter(planned_jobs(snakemake(work, "-n")))
    # (The DVC test runs this change for real and checks the other jobs' files stay as they were.)
    n = len(TINY["studies"]["tiny"]["sparsities"])  # one job per grid point
    assert jobs == Counter([("prune", "random"), ("finetune", "random"), ("benchmark", "random")]
                           * n + [(rule, None) for rule in [*ANALYSIS, "all"]])


# ------------------------------------------------------------------------- DVC


@pytest.mark.slow
def test_dvc_stage_versions_and_reruns_the_workflow(built, tmp_path):
    repo = copy_build(built, tmp_path / "repo")
    # The clone needed no `dvc init`; nothing DVC caches is in git, and the build left the
    # tree clean (its text results are committed by the fixture, as a user would).
    assert (repo / ".dvc/config").is_file() and not git(repo, "status", "--porcelain")
    assert not git(repo, "ls-files", *CACHED)
    assert "didn't change" in dvc(repo, "repro")

    # The headline: one row per method, a handful of columns a person can read.
    shown = dvc(repo, "metrics", "show")
    rows = [line for line in shown.splitlines() if "results/headline/tiny/" in line]
    assert sorted(re.search(r"tiny/(\S+)\.json", r).group(1) for r in rows) == sorted(
        ["global_magnitude", "random", "lottery"])
    header = shown.splitlines()[0].split()
    assert header[0] == "Path" and "dense_top1" in header and len(header) <= 6, header
    dvc(repo, "plots", "show")
    assert (repo / "dvc_plots/index.html").is_file()

    dvc(repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    git(repo, "commit", "-qam", "remote")
    dvc(repo, "push")
    jobs = snapshot(repo / "results/jobs")
    shutil.rmtree(repo / "results/jobs")
    dvc(repo, "pull")
    restored = snapshot(repo / "results/jobs")
    assert {k: v[1] for k, v in restored.items()} == {k: v[1] for k, v in jobs.items()}

    # A fresh clone gets the results from the remote and nothing is out of date.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    dvc(clone, "pull")
    assert "up to date" in dvc(clone, "status")
    rules = {rule for rule, _ in planned_jobs(snakemake(clone, "-n"))}
    assert not rules & {"download", *RULE_FOR_STAGE.values(), "aggregate"}

    # An experiment on one method's option reruns that method's jobs only: DVC keeps the
    # persistent outputs and Snakemake leaves the other jobs' files alone.
    jobs_dir = repo / "results/jobs"
    kept = [p for p in jobs_dir.rglob("*.json") if p.parent.name != "random"]
    kept_state = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept}
    dvc(repo, "exp", "run", "-S", "studies.tiny.methods.random.distribution=global")
    changed = yaml.safe_load((repo / "params.yaml").read_text())
    assert changed["studies"]["tiny"]["methods"]["random"]["distribution"] == "global"
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept} == kept_state
    assert len(list((jobs_dir / "tiny/finetune/random").glob("*.json"))) == 4  # 2 old, 2 new
    assert "didn't change" in dvc(repo, "repro")
