#!/usr/bin/env bash
# Tables, plots and report of the MNIST reproduction from the finished jobs' manifests
# (after results/mnist/run.sh 0/1/2). The one-shot ticket is the fidelity check, kept apart.
set -euo pipefail
pb=.venv/bin/prunebench
grid=$(ls results/mnist/jobs/*.json | grep -v lottery_oneshot)
$pb aggregate $grid --out results/mnist/tables --metrics results/mnist/metrics.json
$pb plot --tables results/mnist/tables --out results/mnist/plots
$pb report --tables results/mnist/tables --plots results/mnist/plots --out results/mnist/report.md
$pb aggregate results/mnist/jobs/dense-*.json results/mnist/jobs/lottery_oneshot-*.json \
    --out results/mnist/fidelity
