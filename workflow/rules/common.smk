# Config validation, the job plan, and the lookups the rules' input functions use.
#
# Which jobs exist is decided by `prunebench.plan`, not here: one job per grid point, and a
# job's manifest path carries the hash of the runs it produces, so an edited option yields
# new paths and only those jobs run. Inputs are marked ancient(): modification times never
# trigger a rerun (DVC checkouts and `dvc pull` change them); the hash in the path and the
# params/input/code triggers do.
import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from prunebench.config import canonical, read_params
from prunebench.study import validate_params
from prunebench.errors import ConfigError
from prunebench.plan import final_jobs, plan, study_figures
from prunebench.stages import STAGES
from prunebench import launcher
from prunebench.analysis.names import PLOT_GROUPS

# The jobs read their study from this file (the CLI's --params), so the grid must live
# there: `--config` may pick `scale`, `only`, `runs_root` and `gpus_per_job`, not edit
# studies.
PARAMS_FILE = "params.yaml"
JOBS_ROOT = "results/jobs"
RUNS_ROOT = config.get("runs_root", "results/runs")

try:
    FILE_STUDIES = read_params(PARAMS_FILE).get("studies")  # duplicate keys: refused here
    STUDIES = validate_params(config)
    JOBS = plan(config, JOBS_ROOT)
except ConfigError as err:
    raise WorkflowError(f"invalid {PARAMS_FILE}: {err}") from None
validate(config, "../schemas/params.schema.json", set_default=False)
if config["studies"] != FILE_STUDIES:
    raise WorkflowError(
        f"studies differ from {PARAMS_FILE}, which the jobs read: edit the grid there "
        "(--config/--configfile may only set scale, only, runs_root and gpus_per_job)"
    )
PLANNED = {(j.stage, j.study, j.label, j.hash): j for j in JOBS}
SELECTED = sorted({j.study for j in JOBS})
STAGE_NAMES = list(STAGES)


def _gpus_per_job():
    """GPUs each stage job asks for: `gpus_per_job`, else 1 when the command line offers GPUs
    (`--resources gpu=N`), else 0."""
    if "gpus_per_job" in config:
        return int(config["gpus_per_job"])
    offered = workflow.global_resources
    gpus = getattr(offered["gpu"], "value", offered["gpu"]) if "gpu" in offered else 0
    return 1 if gpus else 0


GPUS_PER_JOB = _gpus_per_job()


wildcard_constraints:
    study="|".join(map(re.escape, STUDIES)),
    label=r"[A-Za-z0-9_]+",
    point=r"[A-Za-z0-9_.+-]+",
    hash=r"[0-9a-f]{16}",


# Local runs fork every job from one server that has imported torch (prunebench.launcher);
# cluster jobs (and dry runs) start their own process as before.
SERVER = {}


def _socket_path():
    """Under the temp directory: a unix socket's path must stay short (108 bytes)."""
    return str(Path(tempfile.gettempdir()) / f"prunebench-{os.getpid()}.sock")


def _stop_server():
    if "pid" in SERVER:
        launcher.stop_server(SERVER.pop("pid"))
        os.environ.pop(launcher.ENV_SERVER, None)


onstart:
    if workflow.local_exec and os.environ.get("PRUNEBENCH_NO_SERVER") != "1":
        path = _socket_path()
        SERVER["pid"] = launcher.start_server(
            path, parent=os.getpid(), log_path=".snakemake/log/prunebench-server.log")
        os.environ[launcher.ENV_SERVER] = path


onsuccess:
    _stop_server()


onerror:
    _stop_server()


def planned_job(stage, wildcards, label=None):
    label = label or wildcards.label
    key = (stage, wildcards.study, label, wildcards.hash)
    if key not in PLANNED:
        raise WorkflowError(
            f"{stage} job {wildcards.study}/{label}-{wildcards.hash}"
            f" is not in the plan of {PARAMS_FILE}: its hash names a configuration that"
            " the params (with this scale) do not ask for"
        )
    return PLANNED[key]


def planned_inputs(stage, label=None):
    """Input function: the study's data manifest and the manifests of the parent jobs that
    the plan lists."""

    def inputs(wildcards):
        parents = list(planned_job(stage, wildcards, label).inputs)
        return ancient([f"results/data/{wildcards.study}.json", *parents])

    return inputs


def planned_runtime(stage, minutes):
    """Resource function: `minutes` per grid point, times the runs a stack's leader trains."""

    def runtime(wildcards):
        return minutes * planned_job(stage, wildcards).stack

    return runtime


def study_threads(wildcards):
    """A job's cores: its study's `threads`, which every run of the study trains with (the
    CLI reads it from the params file, so local and cluster runs agree bit for bit)."""
    return STUDIES[wildcards.study].threads


def data_params(wildcards):
    """The hashed part of a study's data config: a change reruns `download`."""
    return json.dumps(canonical(STUDIES[wildcards.study].data), sort_keys=True)


def all_manifests():
    return [j.manifest for j in JOBS]


def study_manifests(study):
    return [j.manifest for j in JOBS if j.study == study]


def result_manifests(study):
    """Manifests of a study's jobs whose runs are results (dense, recovered, lottery) and
    of the benchmark jobs that measured them."""
    final = {j.manifest for j in final_jobs(JOBS)}
    return [j.manifest for j in JOBS
            if j.study == study and (j.manifest in final or j.stage == "benchmark")]


def plot_files(study):
    """The figures of a study that its declaration says its runs will fill
    (`prunebench.plan.study_figures`: no lottery figure without lottery tickets, no sparsity
    axis without an unstructured method, ...); each is the output of the plot rule of its
    group (PLOT_GROUPS)."""
    return [f"results/plots/{study}_{name}.png" for name in study_figures(STUDIES[study])]


TABLES = ("runs.csv", "summary.csv", "summary.md", "metrics.json")


def study_outputs():
    """The final targets: every selected study's tables, plots, report, granularity check
    and headline. The tables and plots are targets themselves, not only inputs
    of the report: a job killed while writing them (its outputs deleted) is redone by the
    next run even though the report is still there."""
    files = []
    for study in SELECTED:
        files += [f"results/studies/{study}/{name}" for name in TABLES]
        files += plot_files(study)
        files += [f"results/studies/{study}/{name}"
                  for name in ("report.md", "checklist.json", "granularity.json")]
        files.append(f"results/headline/{study}")
    return files


def job_benchmarks(study):
    """The `benchmark:` file of every planned job of a study, download and analysis too."""
    files = [f"results/benchmarks/{study}/download.tsv"]
    for j in JOBS:
        if j.study == study:
            stem = Path(j.manifest).relative_to(JOBS_ROOT).with_suffix(".tsv")
            files.append(str(Path("results/benchmarks") / stem))
    return files + [f"results/benchmarks/{study}/{r}.tsv" for r in ("aggregate", "plot", "report")]


def results_pages():
    """The docs pages of the selected studies (rule page)."""
    return [f"docs/results/{study}.md" for study in SELECTED]
