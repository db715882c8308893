# Config validation, the job plan, and the lookups the rules' input functions use.
#
# Which jobs exist is decided by `prunebench.plan`, not here: a job's manifest path carries
# the hash of the runs it produces, so an edited option yields new paths and only those jobs
# run. Inputs are marked ancient(): modification times never trigger a rerun (DVC checkouts
# and `dvc pull` change them); the hash in the path and the params/input/code triggers do.
import json
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from prunebench.config import canonical, read_params
from prunebench.study import validate_params
from prunebench.errors import ConfigError
from prunebench.plan import final_jobs, plan

# The jobs read their study from this file (the CLI's --params), so the grid must live
# there: `--config` may pick `scale` and `runs_root`, not edit studies.
PARAMS_FILE = "params.yaml"
JOBS_ROOT = "results/jobs"
RUNS_ROOT = config.get("runs_root", "results/runs")
PLOTS = (
    "accuracy_vs_sparsity",
    "delta_vs_dense",
    "params_remaining",
    "accuracy_vs_params",
    "accuracy_vs_macs",
    "pareto_macs",
    "pareto_latency",
    "training_curves",
)

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
        "(--config/--configfile may only set scale, only and runs_root)"
    )
PLANNED = {(j.stage, j.study, j.label, j.hash): j for j in JOBS}
SELECTED = sorted({j.study for j in JOBS})


wildcard_constraints:
    study="|".join(map(re.escape, STUDIES)),
    label=r"[A-Za-z0-9_]+",
    hash=r"[0-9a-f]{16}",


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
    """Input function: the manifests of the parent jobs that the plan lists."""

    def inputs(wildcards):
        return ancient(list(planned_job(stage, wildcards, label).inputs))

    return inputs


def study_threads(wildcards):
    """A job's cores: its study's `threads`, which every run of the study trains with (the
    CLI reads it from the params file, so local and cluster runs agree bit for bit)."""
    return STUDIES[wildcards.study].threads


def data_params(wildcards):
    """The hashed part of a study's data config: a change reruns `download`."""
    return json.dumps(canonical(STUDIES[wildcards.study].data), sort_keys=True)


def all_manifests():
    return [j.manifest for j in JOBS]


def result_manifests(study):
    """Manifests of a study's jobs whose runs are results (dense, recovered, lottery) and
    of the benchmark jobs that measured them."""
    final = {j.manifest for j in final_jobs(JOBS)}
    return [j.manifest for j in JOBS
            if j.study == study and (j.manifest in final or j.stage == "benchmark")]


def plot_files(study):
    return [f"results/plots/{study}_{plot}.png" for plot in PLOTS]


def study_outputs():
    """The final targets: every selected study's report and granularity check, the headline."""
    return [f"results/studies/{study}/{name}" for study in SELECTED
            for name in ("report.md", "granularity.json")] + ["results/metrics.json"]


def job_benchmarks(study):
    """The `benchmark:` file of every planned job of a study, download and analysis too."""
    files = [f"results/benchmarks/{study}/download.tsv"]
    for j in JOBS:
        if j.study == study:
            stem = Path(j.manifest).relative_to(JOBS_ROOT).with_suffix(".tsv")
            files.append(str(Path("results/benchmarks") / stem))
    return files + [f"results/benchmarks/{study}/{r}.tsv" for r in ("aggregate", "plot", "report")]
