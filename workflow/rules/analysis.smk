# Tables, report and the job-granularity check, one set per study under
# results/studies/<study>/ (plots in results/plots/<study>_*.png), so that selecting studies
# (`--config only=...`, `scale=...`) never overwrites another study's results. All cheap and
# local.
#
# Manifests and benchmark files are named by their job's hash, so they are ancient() like
# the jobs' inputs. The tables are not: plot and report must follow every aggregate rerun,
# which ancient() would stop; a bare timestamp change does not rerun them either, as
# Snakemake compares the inputs' recorded checksums first.
rule aggregate:
    input:
        lambda wildcards: ancient(result_manifests(wildcards.study)),
    output:
        runs="results/studies/{study}/runs.csv",
        summary="results/studies/{study}/summary.csv",
        summary_md="results/studies/{study}/summary.md",
        metrics="results/studies/{study}/metrics.json",
    log:
        "results/logs/{study}/aggregate.log",
    benchmark:
        "results/benchmarks/{study}/aggregate.tsv"
    conda:
        "../envs/prunebench.yaml"
    params:
        tables=lambda wildcards, output: Path(output.runs).parent,
    shell:
        "prunebench aggregate {input} --out {params.tables} --metrics {output.metrics}"
        " > {log} 2>&1"


rule plot:
    input:
        runs=rules.aggregate.output.runs,
        summary=rules.aggregate.output.summary,
    output:
        plot_files("{study}"),
    log:
        "results/logs/{study}/plot.log",
    benchmark:
        "results/benchmarks/{study}/plot.tsv"
    conda:
        "../envs/prunebench.yaml"
    params:
        tables=lambda wildcards, input: Path(input.runs).parent,
        plots=lambda wildcards, output: Path(output[0]).parent,
        figures=" ".join(PLOTS),
    shell:
        "prunebench plot --tables {params.tables} --out {params.plots}"
        " --figures {params.figures} > {log} 2>&1"


# Methods side by side at equal cost: only for a study with `budgets:` (the only figure a
# study may or may not have, so a rule of its own with a fixed output).
rule plot_budgets:
    input:
        runs=rules.aggregate.output.runs,
        summary=rules.aggregate.output.summary,
    output:
        "results/plots/{study}_equal_cost.png",
    log:
        "results/logs/{study}/plot_budgets.log",
    conda:
        "../envs/prunebench.yaml"
    params:
        tables=lambda wildcards, input: Path(input.runs).parent,
        plots=lambda wildcards, output: Path(output[0]).parent,
    shell:
        "prunebench plot --tables {params.tables} --out {params.plots}"
        " --figures equal_cost > {log} 2>&1"


rule report:
    input:
        tables=rules.aggregate.output,
        plots=rules.plot.output,
        budget_plots=lambda wildcards: budget_plot_files(wildcards.study),
    output:
        report="results/studies/{study}/report.md",
        checklist="results/studies/{study}/checklist.json",
    log:
        "results/logs/{study}/report.log",
    benchmark:
        "results/benchmarks/{study}/report.tsv"
    conda:
        "../envs/prunebench.yaml"
    params:
        tables=lambda wildcards, input: Path(input.tables[0]).parent,
        plots=lambda wildcards, input: Path(input.plots[0]).parent,
    shell:
        "prunebench report --tables {params.tables} --plots {params.plots}"
        " --out {output.report} --checklist {output.checklist} > {log} 2>&1"


# The numbers a person reads first, one small file per method (DVC's metrics: `dvc metrics
# show` prints one row per file): dense top-1 and the most parameters removed within one
# point of it.
rule headline:
    input:
        "results/studies/{study}/metrics.json",
    output:
        directory("results/headline/{study}"),
    log:
        "results/logs/{study}/headline.log",
    conda:
        "../envs/prunebench.yaml"
    shell:
        "prunebench headline {input} --out {output} > {log} 2>&1"


# Share of the study's job wall time that is start-up overhead (job wall time minus the work
# its manifest records), against the 15 % target.
rule granularity:
    input:
        benchmarks=lambda wildcards: ancient(job_benchmarks(wildcards.study)),
        manifests=lambda wildcards: ancient(study_manifests(wildcards.study)),
        script="workflow/scripts/granularity.py",
    output:
        "results/studies/{study}/granularity.json",
    log:
        "results/logs/{study}/granularity.log",
    benchmark:
        "results/benchmarks/{study}/granularity.tsv"
    conda:
        "../envs/prunebench.yaml"
    params:
        jobs=JOBS_ROOT,
    shell:
        "python {input.script} {input.benchmarks} --jobs {params.jobs} --out {output}"
        " > {log} 2>&1"
