# Size, MACs, memory, latency and energy of every result run (prunebench.metrics), one
# benchmark run per result run; aggregate joins them to the result rows.
rule benchmark:
    input:
        planned_inputs("benchmark"),
    output:
        "results/jobs/{study}/benchmark/{label}-{hash}.json",
    log:
        "results/logs/{study}/benchmark/{label}-{hash}.log",
    benchmark:
        "results/benchmarks/{study}/benchmark/{label}-{hash}.tsv"
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
        "prunebench benchmark --params {params.params_file} --study {wildcards.study}"
        " --method {wildcards.label} --runs-root {params.runs_root}"
        " --manifest {output} --no-progress > {log} 2>&1"
