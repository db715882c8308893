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


# The figures, one rule per group of PLOT_GROUPS (names.py): "plot" draws those every study
# has, the others a group that only some studies have (sparsity axes, training curves,
# lottery tickets, equal cost), so that each rule's outputs are fixed and a study asks only
# for the figures its runs will fill (plot_files).
rule plot:
    input:
        runs=rules.aggregate.output.runs,
        summary=rules.aggregate.output.summary,
    output:
        [f"results/plots/{{study}}_{name}.png" for name in PLOT_GROUPS["plot"]],
    log:
        "results/logs/{study}/plot.log",
    benchmark:
        "results/benchmarks/{study}/plot.tsv"
    conda:
        "../envs/prunebench.yaml"
    params:
        tables=lambda wildcards, input: Path(input.runs).parent,
        plots=lambda wildcards, output: Path(output[0]).parent,
        figures=" ".join(PLOT_GROUPS["plot"]),
    shell:
        "prunebench plot --tables {params.tables} --out {params.plots}"
        " --figures {params.figures} > {log} 2>&1"


for _group, _figures in PLOT_GROUPS.items():
    if _group == "plot":
        continue

    rule:
        name:
            _group
        localrule: True
        input:
            runs=rules.aggregate.output.runs,
            summary=rules.aggregate.output.summary,
        output:
            [f"results/plots/{{study}}_{name}.png" for name in _figures],
        log:
            f"results/logs/{{study}}/{_group}.log",
        conda:
            "../envs/prunebench.yaml"
        params:
            tables=lambda wildcards, input: Path(input.runs).parent,
            plots=lambda wildcards, output: Path(output[0]).parent,
            figures=" ".join(_figures),
        shell:
            "prunebench plot --tables {params.tables} --out {params.plots}"
            " --figures {params.figures} > {log} 2>&1"


rule report:
    input:
        tables=rules.aggregate.output,
        plots=lambda wildcards: plot_files(wildcards.study),
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


# Each study's results page in the docs (docs/results/<study>.md): how it was made (the
# command and wall time recorded in granularity.json, the runs' code and machine), the
# checklist, the comparison with the papers the study declares, tables and figures. The
# papers are a parameter so that editing them rewrites the page.
rule page:
    input:
        tables=rules.aggregate.output,
        plots=lambda wildcards: plot_files(wildcards.study),
        checklist=rules.report.output.checklist,
        granularity=rules.granularity.output,
    output:
        "docs/results/{study}.md",
    log:
        "results/logs/{study}/page.log",
    conda:
        "../envs/prunebench.yaml"
    params:
        tables=lambda wildcards, input: Path(input.tables[0]).parent,
        plots=lambda wildcards, input: Path(input.plots[0]).parent,
        papers=lambda wildcards: json.dumps(
            [dataclasses.asdict(p) for p in STUDIES[wildcards.study].papers], sort_keys=True),
    shell:
        "prunebench page --tables {params.tables} --plots {params.plots} --study {wildcards.study}"
        " --granularity {input.granularity} --params params.yaml --out {output} > {log} 2>&1"


# The docs' results index and the README's block of headline numbers, from every study whose
# tables are in results/studies/ (those not selected this time too, as committed).
rule results_index:
    input:
        lambda wildcards: results_pages(),
    output:
        "docs/results/index.md",
    log:
        "results/logs/results_index.log",
    conda:
        "../envs/prunebench.yaml"
    shell:
        "prunebench pages --studies results/studies --out docs/results --readme README.md"
        " > {log} 2>&1"
