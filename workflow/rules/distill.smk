# NOT BUILT YET (a later issue): knowledge distillation into the pruned models, after
# retrain/rewind.
#
# This rule adds no job until `prunebench.plan` emits "distill" jobs, which it will once the
# `prunebench distill` command exists: nothing requests its output before then, and its
# input function rejects any job the plan does not list. The plan then wires it in, with no
# change to the other rules: its jobs' inputs, and the later jobs' inputs (or `final_jobs`,
# which aggregate reads) that name its manifests.
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
    threads: 1
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
