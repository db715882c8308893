#!/usr/bin/env bash
# Remake the analysis of committed studies from their committed tables, with the commands
# the workflow's analysis rules run (plot*, report, page, results_index), where the run
# directories are not at hand (they are DVC's, not git's). The tables themselves
# (aggregate) and the training-curve figure need the run directories: they are left as
# they are; the workflow remakes them with the runs.
#
#   scripts/reanalyse.sh STUDY...        # e.g. scripts/reanalyse.sh digits_cnn mnist_lth
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.venv/bin}"
for study in "$@"; do
    tables="results/studies/$study"
    figures=$("$BIN/python" - "$study" <<'PY'
import sys
from prunebench.plan import study_figures
from prunebench.study import load_study
print(" ".join(f for f in study_figures(load_study("params.yaml", sys.argv[1]))
               if f != "training_curves"))
PY
)
    "$BIN/prunebench" plot --tables "$tables" --out results/plots --figures $figures
    "$BIN/prunebench" report --tables "$tables" --plots results/plots \
        --out "$tables/report.md" --checklist "$tables/checklist.json"
    "$BIN/prunebench" page --tables "$tables" --plots results/plots --study "$study" \
        --granularity "$tables/granularity.json" --params params.yaml \
        --out "docs/results/$study.md"
done
"$BIN/prunebench" pages --studies results/studies --out docs/results --readme README.md
