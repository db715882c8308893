# Per-layer sensitivity sweep of the dense models, one job per study x `sensitivity` method
# (all seeds); the plan lists it among the inputs of that method's prune job.
rule sensitivity:
    input:
        planned_inputs("sensitivity"),
    output:
        "results/jobs/{study}/sensitivity/{label}-{hash}.json",
    log:
        "results/logs/{study}/sensitivity/{label}-{hash}.log",
    benchmark:
        "results/benchmarks/{study}/sensitivity/{label}-{hash}.tsv"
    conda:
        "../envs/prunebench.yaml"
    threads: study_threads
    resources:
        mem_mb=2000,
        runtime=60,
        gpu=0,
    params:
        params_file=PARAMS_FILE,
        runs_root=RUNS_ROOT,
    shell:
        "prunebench sensitivity --params {params.params_file} --study {wildcards.study}"
        " --method {wildcards.label} --runs-root {params.runs_root}"
        " --manifest {output} --no-progress > {log} 2>&1"
