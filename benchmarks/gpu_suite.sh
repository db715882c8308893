#!/usr/bin/env bash
# The one command for the GPU machine (issue #26): every GPU check, timed, into
# benchmarks/results/gpu_suite.json (always written; see benchmarks/gpu_suite.py).
#
#   bash benchmarks/gpu_suite.sh [gpu_suite.py arguments...]
#
# Python: $PYTHON if set; else .venv/bin/python if it exists; else the machine's python3
# with src/ on PYTHONPATH (the device machines have torch but no registry, so `make install`
# cannot run there); else `make install`. Pure-Python dependencies missing there (thop,
# torch_pruning) are installed from .whl/ if it was carried (.whl is git-ignored):
#   python3 -m pip download --no-deps -d .whl ultralytics-thop==2.2.3 torch-pruning==1.6.1
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
  PY=.venv/bin/python
elif command -v python3 >/dev/null && python3 -c "import torch" 2>/dev/null; then
  PY=python3
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu_suite_site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/gpu_suite_site"
  fi
else
  make install || exit 1
  PY=.venv/bin/python
fi
"$PY" -c "import prunebench, thop, torch_pruning" || echo "warning: prunebench's imports fail; the parts will record the error" >&2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
exec "$PY" benchmarks/gpu_suite.py --device "${DEVICE:-cuda}" "$@"
