# Dense training per study (all seeds), a method's own pretraining (network slimming's BN
# penalty) and methods that prune during training (gradual magnitude pruning).
rule train:
    input:
        data=ancient("results/data/{study}.json"),
        parents=planned_inputs("train"),
    output:
        "results/jobs/{study}/train/{label}-{hash}.json",
    log:
        "results/logs/{study}/train/{label}-{hash}.log",
    benchmark:
        "results/benchmarks/{study}/train/{label}-{hash}.tsv"
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
        "prunebench train --params {params.params_file} --study {wildcards.study}"
        " --method {wildcards.label} --runs-root {params.runs_root} --manifest {output}"
        " --no-progress > {log} 2>&1"
