# Recovery by knowledge distillation from the dense model of the same seed (a study's
# `recover: [..., distill]`), beside fine-tuning.
rule distill:
    input:
        planned_inputs("distill"),
    output:
        "results/jobs/{study}/distill/{label}-{hash}.json",
    log:
        "results/logs/{study}/distill/{label}-{hash}.log",
    benchmark:
        "results/benchmarks/{study}/distill/{label}-{hash}.tsv"
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
        "prunebench distill --params {params.params_file} --study {wildcards.study}"
        " --method {wildcards.label} --runs-root {params.runs_root}"
        " --manifest {output} --no-progress > {log} 2>&1"
