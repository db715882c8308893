# One rule per stage of `prunebench.stages` (train, sensitivity, prune, finetune, distill,
# rewind, lottery, benchmark), all of one shape: a job makes the runs of one grid point (a lottery
# job: one chain) by calling `prunebench <stage> --job <hash>`, and writes their manifest.
# Which jobs exist, and their inputs, come from the plan (common.smk).
#
# Locally every job is forked from a server that imported torch once (`onstart` in
# common.smk), so a job costs its work, not ~2.5 s of start-up. `gpu` is 1 per job with
# `--config gpus_per_job=1` (or `--resources gpu=N`, which implies it): N jobs then train at
# once, each on a free GPU of its own (prunebench.devices). Runtimes are in minutes, the
# SLURM limit of one grid point at paper scale, times the runs a stack's leader trains
# (prunebench.stacking); raise one with `--set-resources lottery:runtime=2880`.
RUNTIME = {
    "train": 240,
    "sensitivity": 120,
    "prune": 60,
    "finetune": 240,
    "distill": 240,
    "rewind": 240,
    "lottery": 1440,
    "benchmark": 60,
}

for stage_name in STAGE_NAMES:

    rule:
        name:
            stage_name
        input:
            planned_inputs(stage_name),
        output:
            f"{JOBS_ROOT}/{{study}}/{stage_name}/{{label}}/{{point}}-{{hash}}.json",
        log:
            f"results/logs/{{study}}/{stage_name}/{{label}}/{{point}}-{{hash}}.log",
        benchmark:
            f"results/benchmarks/{{study}}/{stage_name}/{{label}}/{{point}}-{{hash}}.tsv"
        conda:
            "../envs/prunebench.yaml"
        threads: study_threads
        resources:
            gpu=GPUS_PER_JOB,
            runtime=planned_runtime(stage_name, RUNTIME[stage_name]),
        params:
            params_file=PARAMS_FILE,
            runs_root=RUNS_ROOT,
            stage=stage_name,
        shell:
            "prunebench {params.stage} --params {params.params_file} --study {wildcards.study}"
            " --method {wildcards.label} --job {wildcards.hash} --runs-root {params.runs_root}"
            " --manifest {output} --no-progress > {log} 2>&1"
