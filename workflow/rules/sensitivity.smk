# Per-layer sensitivity sweep of the dense model, one job per study x `sensitivity` method x
# seed; the plan lists it among the inputs of that method's prune job.
rule sensitivity:
    input:
        planned_inputs("sensitivity"),
    output:
        "results/jobs/{study}/sensitivity/{label}/seed{seed}-{hash}.json",
    log:
        "results/logs/{study}/sensitivity/{label}/seed{seed}-{hash}.log",
    benchmark:
        "results/benchmarks/{study}/sensitivity/{label}/seed{seed}-{hash}.tsv"
    conda:
        "../envs/prunebench.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
        gpu=0,
    params:
        params_file=PARAMS_FILE,
        runs_root=RUNS_ROOT,
    shell:
        "prunebench sensitivity --params {params.params_file} --study {wildcards.study}"
        " --method {wildcards.label} --seed {wildcards.seed} --runs-root {params.runs_root}"
        " --manifest {output} --no-progress > {log} 2>&1"
