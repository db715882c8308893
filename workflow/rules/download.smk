# Fetch/verify each selected study's dataset (offline digits needs nothing; MNIST/CIFAR come
# from a mirror or a checksum-verified download). Local: login nodes have the network.
rule download:
    output:
        "results/data/{study}.json",
    log:
        "results/logs/{study}/download.log",
    benchmark:
        "results/benchmarks/{study}/download.tsv"
    conda:
        "../envs/prunebench.yaml"
    params:
        params_file=PARAMS_FILE,
        data=data_params,
    shell:
        "prunebench data --params {params.params_file} --study {wildcards.study}"
        " --manifest {output} --no-progress > {log} 2>&1"
