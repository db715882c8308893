# Tables, plots and the report from the result jobs' manifests; then the job-granularity
# check. All cheap and local.
#
# Manifests and benchmark files are named by their job's hash, so they are ancient() like
# the jobs' inputs. The tables are not: plot and report must follow every aggregate rerun,
# which ancient() would stop; a bare timestamp change does not rerun them either, as
# Snakemake compares the inputs' recorded checksums first.
rule aggregate:
    input:
        ancient(result_manifests()),
    output:
        runs="results/tables/runs.csv",
        summary="results/tables/summary.csv",
        summary_md="results/tables/summary.md",
        metrics="results/metrics.json",
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
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
        plot_files(),
    log:
        "results/logs/plot.log",
    benchmark:
        "results/benchmarks/plot.tsv"
    conda:
        "../envs/prunebench.yaml"
    params:
        tables=lambda wildcards, input: Path(input.runs).parent,
        plots=lambda wildcards, output: Path(output[0]).parent,
    shell:
        "prunebench plot --tables {params.tables} --out {params.plots} > {log} 2>&1"


rule report:
    input:
        tables=rules.aggregate.output,
        plots=rules.plot.output,
    output:
        "results/report.md",
    log:
        "results/logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    conda:
        "../envs/prunebench.yaml"
    params:
        tables=lambda wildcards, input: Path(input.tables[0]).parent,
        plots=lambda wildcards, input: Path(input.plots[0]).parent,
    shell:
        "prunebench report --tables {params.tables} --plots {params.plots} --out {output}"
        " > {log} 2>&1"


# Share of the jobs' wall time spent starting a process and importing prunebench.
rule granularity:
    input:
        ancient(job_benchmarks()),
    output:
        "results/granularity.json",
    log:
        "results/logs/granularity.log",
    benchmark:
        "results/benchmarks/granularity.tsv"
    conda:
        "../envs/prunebench.yaml"
    params:
        script="workflow/scripts/granularity.py",
    shell:
        "python {params.script} {input} --out {output} > {log} 2>&1"
