# prunebench workflow. The grid lives in params.yaml; `prunebench.plan` turns it into jobs.
#
#   snakemake --cores 2 --workflow-profile workflow/profiles/default    (what `make run` does)
#   snakemake --cores 2 --config scale=paper    # the paper-scale studies (datasets + GPU)
#   snakemake --cores 2 --config scale=all      # both
#   snakemake --profile workflow/profiles/slurm # on a SLURM cluster
#
# DAG: download -> train -> sensitivity -> prune -> finetune | distill | lottery
#      -> benchmark -> aggregate -> plot -> report (-> granularity)
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sensitivity.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/analysis.smk"


localrules:
    all,
    download,
    aggregate,
    plot,
    report,
    headline,
    granularity,


rule all:
    default_target: True
    input:
        all_manifests(),
        study_outputs(),
