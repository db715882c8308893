rule train_dense:
    input:
        data=ancient("results/data/{study}.json"),
        parents=planned_inputs("train", label="dense"),
    output:
        "results/jobs/{study}/train/dense-{hash}.json",
    log:
        "results/logs/{study}/train/dense-{hash}.log",
    benchmark:
        "results/benchmarks/{study}/train/dense-{hash}.tsv"
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
        " --runs-root {params.runs_root} --manifest {output}"
        " --threads {threads} --no-progress > {log} 2>&1"
