#!/usr/bin/env bash
# MNIST LeNet-300-100 (paper-scale study `mnist_lenet300`) for one seed: dense, the one-shot
# lottery-ticket fidelity check at 80 %, then every method at 80/95/98 %.
# Usage: results/mnist/run.sh SEED   (one process per seed, one torch thread each)
seed=$1
export PRUNEBENCH_DATA_MIRROR=${PRUNEBENCH_DATA_MIRROR:-../shared/data} OMP_NUM_THREADS=1
pb() { .venv/bin/prunebench "$@" --study mnist_lenet300 --seed "$seed" --threads 1 \
       --runs-root results/mnist/runs --no-progress >> "results/mnist/log-seed$seed.txt" 2>&1; }
pb train --manifest "results/mnist/jobs/dense-$seed.json"
pb lottery --method lottery --sparsity 0.8 --set methods.lottery.prune_fraction=0.8 \
   --manifest "results/mnist/jobs/lottery_oneshot-$seed.json"
for m in global_magnitude layer_magnitude random random_erk wanda sensitivity \
         gradual_magnitude snip grasp synflow; do
  pb finetune --method "$m" --manifest "results/mnist/jobs/$m-$seed.json"
done
pb lottery --method lottery --set methods.lottery.prune_fraction=0.5 \
   --manifest "results/mnist/jobs/lottery_imp-$seed.json"
