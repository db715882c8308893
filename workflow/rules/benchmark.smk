# NOT BUILT YET (a later issue): hardware metrics (latency, memory, MACs) of each result run,
# before aggregate.
#
# This rule adds no job until `prunebench.plan` emits "benchmark" jobs, which it will once the
# `prunebench benchmark` command exists: nothing requests its output before then, and its
# input function rejects any job the plan does not list. The plan then wires it in, with no
# change to the other rules: its jobs' inputs, and the later jobs' inputs (or `final_jobs`,
# which aggregate reads) that name its manifests.
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
    threads: 1
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
