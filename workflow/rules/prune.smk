# One job per study x method runs all of the study's seeds and sparsities: a job is one process,
# and per-sparsity jobs would spend most of their time starting up (see granularity).


# One-shot pruning of trained (or initial) weights.
rule prune:
    input:
        planned_inputs("prune"),
    output:
        "results/jobs/{study}/prune/{label}-{hash}.json",
    log:
        "results/logs/{study}/prune/{label}-{hash}.log",
    benchmark:
        "results/benchmarks/{study}/prune/{label}-{hash}.tsv"
    conda:
        "../envs/prunebench.yaml"
    threads: study_threads
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=0,
    params:
        params_file=PARAMS_FILE,
        runs_root=RUNS_ROOT,
    shell:
        "prunebench prune --params {params.params_file} --study {wildcards.study}"
        " --method {wildcards.label} --runs-root {params.runs_root}"
        " --manifest {output} --no-progress > {log} 2>&1"


# Recovery by fine-tuning with the structure fixed (mask or removed channels).
rule finetune:
    input:
        planned_inputs("finetune"),
    output:
        "results/jobs/{study}/finetune/{label}-{hash}.json",
    log:
        "results/logs/{study}/finetune/{label}-{hash}.log",
    benchmark:
        "results/benchmarks/{study}/finetune/{label}-{hash}.tsv"
    conda:
        "../envs/prunebench.yaml"
    threads: study_threads
    resources:
        mem_mb=2000,
        runtime=120,
        gpu=0,
    params:
        params_file=PARAMS_FILE,
        runs_root=RUNS_ROOT,
    shell:
        "prunebench finetune --params {params.params_file} --study {wildcards.study}"
        " --method {wildcards.label} --runs-root {params.runs_root}"
        " --manifest {output} --no-progress > {log} 2>&1"


# Lottery tickets: iterative pruning with rewinding.
rule lottery:
    input:
        planned_inputs("lottery"),
    output:
        "results/jobs/{study}/lottery/{label}-{hash}.json",
    log:
        "results/logs/{study}/lottery/{label}-{hash}.log",
    benchmark:
        "results/benchmarks/{study}/lottery/{label}-{hash}.tsv"
    conda:
        "../envs/prunebench.yaml"
    threads: study_threads
    resources:
        mem_mb=2000,
        runtime=240,
        gpu=0,
    params:
        params_file=PARAMS_FILE,
        runs_root=RUNS_ROOT,
    shell:
        "prunebench lottery --params {params.params_file} --study {wildcards.study}"
        " --method {wildcards.label} --runs-root {params.runs_root}"
        " --manifest {output} --no-progress > {log} 2>&1"
