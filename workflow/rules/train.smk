rule train_dense:
    input:
        data=ancient("results/data/{study}.json"),
        parents=planned_inputs("train", label="dense"),
    output:
        "results/jobs/{study}/train/dense/seed{seed}-{hash}.json",
    log:
        "results/logs/{study}/train/dense/seed{seed}-{hash}.log",
    benchmark:
        "results/benchmarks/{study}/train/dense/seed{seed}-{hash}.tsv"
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
        "prunebench train --params {params.params_file} --study {wildcards.study}"
        " --seed {wildcards.seed} --runs-root {params.runs_root} --manifest {output}"
        " --no-progress > {log} 2>&1"
