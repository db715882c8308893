# prunebench workflow. The grid lives in params.yaml; `prunebench.plan` turns it into jobs,
# one per grid point (seed x target of a method; one chain per method x seed for lottery).
#
#   snakemake --cores 2                         # what `make run` does (the default study)
#   snakemake --cores 2 --config only=mnist_lenet300   # chosen studies, whatever their scale
#   snakemake --cores 2 --config scale=paper    # the paper-scale studies (datasets + GPU)
#   snakemake --cores 16 --resources gpu=4      # four trainings at once, one per GPU
#   snakemake --profile workflow/profiles/slurm # on a SLURM cluster
#
# This file is the entry point; the rules, profiles, schemas, scripts and conda env live in
# workflow/. Snakemake applies the workflow profile `profiles/default` next to this file on
# its own: `profiles` is a link to workflow/profiles, so plain `snakemake` from the root gets
# the settings of workflow/profiles/default (rerun triggers, rerun-incomplete, ...).
#
# DAG: download ─► train ─► sensitivity ─► prune ─► finetune | distill | rewind | lottery
#      ─► benchmark ─► aggregate ─► plot ─► report ─► page ─► results index
#      (beside them: headline, granularity; `plot` is several rules, plot_*, one per group
#      of figures; `results index` is the rule results_index)
import os
import shlex
import sys

from snakemake.utils import min_version

min_version("9.0")

# How this invocation was started, for the studies' results pages (workflow/scripts/
# granularity.py records it); an environment variable, not a rule parameter, so that
# running with other options reruns nothing.
os.environ.setdefault("PRUNEBENCH_COMMAND", shlex.join(["snakemake", *sys.argv[1:]]))


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/stages.smk"
include: "workflow/rules/analysis.smk"


localrules:
    all,
    download,
    aggregate,
    plot,
    report,
    headline,
    granularity,
    page,
    results_index,


rule all:
    default_target: True
    input:
        all_manifests(),
        study_outputs(),
        results_pages(),
        "docs/results/index.md",
