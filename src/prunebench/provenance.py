"""What made a run: the code version and the numerical environment, recorded in every run.

Two runs with the same name (the same configuration) can still come from two different
computations: PyTorch picks its CPU kernels at run time (ATen's dispatch level, MKL's and
oneDNN's code paths), so the same commit gives other weights on an AVX-512 Xeon than on an
AVX2 EPYC; and a fixed bug in a method's module changes what its runs would be today. So
every run's `metrics.json` holds a `provenance` record (`run_record`):

- `code`: the prunebench version, the git commit of the prunebench source that ran and
  whether that source (`src/` and `workflow/` of its checkout) had uncommitted changes (of
  prunebench's checkout, not of a user's own project: a user's model, data and plugin code
  is in the run's name and in its source record);
- `env`: the versions of torch, CUDA, cuDNN, MKL, oneDNN, numpy, scipy, scikit-learn and
  Torch-Pruning, the CPU model, the CPU
  capability ATen dispatches to, the variables that pin a code path and what is in effect
  (`prunebench.determinism`: the mode, MKL's branch, torch's oneDNN and NNPACK switches),
  the thread count, and the GPU's name and driver when the run used one;
- `env_id`: a short hash of the fields of `env` that decide the numbers (everything but the
  free-text platform string), so tables can group runs by environment;
- `source`: the hash of the source files that decide the run's result
  (`prunebench.sources`), which `prunebench status` compares with today's code.

The environment is read once per process (jobs are processes).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from prunebench.determinism import KNOBS, describe
from prunebench.metrics.environment import _nvml_driver_version, cpu_model

PACKAGE_DIR = Path(__file__).resolve().parent
# The fields of `env` that make up `env_id`.
# torch and the libraries inside it, the CPU and the code path in effect: what picks the
# kernels. (The versions of numpy, scipy, scikit-learn and Torch-Pruning are recorded beside
# it, not in it, so that runs recorded before they were keep their id.)
ENV_ID_FIELDS = ("torch", "cuda", "cudnn", "mkl", "onednn", "cpu_model", "cpu_capability",
                 "knobs", "determinism", "threads", "gpu", "gpu_driver")


def _library_version(pattern: str) -> str | None:
    match = re.search(pattern, torch.__config__.show())
    return match.group(1) if match else None


# Other libraries whose numbers a run can depend on (the regression method's LASSO, the
# channel surgery, the data pipeline).
LIBRARIES = ("numpy", "scipy", "scikit-learn", "torch-pruning")


def _library_versions() -> dict[str, str | None]:
    import importlib.metadata

    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def _static_env() -> dict[str, Any]:
    """What does not change within a process (the thread count is read at each call)."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(cudnn) if cudnn is not None else None,
        "mkl": _library_version(r"Math Kernel Library Version ([\w.\-]+)"),
        "onednn": _library_version(r"MKL-DNN (v[\w.\-]+)"),
        "cpu_model": cpu_model(),
        "libraries": _library_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def environment() -> dict[str, Any]:
    """The numerical environment of this process now."""
    env = dict(_static_env())
    env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    # The variables that pin a CPU code path, whatever set them, and what is in effect.
    env["knobs"] = {k: os.environ[k] for k in KNOBS if k in os.environ}
    code_path = describe()
    env["determinism"] = {k: code_path[k] for k in ("mode", "mkl_branch", "mkldnn", "nnpack")}
    env["threads"] = torch.get_num_threads()
    env["gpu"] = env["gpu_driver"] = None
    # A run used a GPU if this process created a CUDA context (it never does on CPU runs).
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        env["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
        env["gpu_driver"] = _nvml_driver_version()
    return env


def env_id(env: Mapping[str, Any]) -> str:
    """A short name for an environment: the hash of the fields that decide the numbers."""
    key = {k: env.get(k) for k in ENV_ID_FIELDS}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


@functools.cache
def code_version() -> dict[str, Any]:
    """The prunebench version and, in a git checkout, the commit of the source that runs and
    whether `src/` or `workflow/` differ from it (untracked source files included)."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("prunebench")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        version = None
    out: dict[str, Any] = {"version": version, "commit": None, "dirty": None}
    top = PACKAGE_DIR.parents[1]  # src/prunebench -> the checkout
    try:
        commit = subprocess.run(["git", "-C", str(top), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=30)
        if commit.returncode != 0:
            return out  # an installed package, not a checkout
        status = subprocess.run(["git", "-C", str(top), "status", "--porcelain", "--", "src",
                                 "workflow"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return out
    out["commit"] = commit.stdout.strip()
    out["dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    return out


def run_record(source: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's provenance: code version, environment (and its id), source record."""
    env = environment()
    return {"code": code_version(), "env": env, "env_id": env_id(env),
            "source": dict(source) if source is not None else None}


# The flat columns of runs.csv (and `prunebench compare`'s header) taken from a record.
COLUMNS = ("env_id", "code_commit", "code_dirty", "prunebench_version", "torch_version",
           "cpu_model", "cpu_capability", "determinism", "determinism_knobs", "gpu",
           "source_hash")


def columns(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """A provenance record as runs.csv columns (all None for a run made before they were
    recorded)."""
    if not record:
        return dict.fromkeys(COLUMNS)
    env, code = record.get("env") or {}, record.get("code") or {}
    knobs = env.get("knobs") or {}
    return {
        # Computed from the record (not read from it), so ids agree across record versions.
        "env_id": env_id(env) if env else record.get("env_id"),
        "code_commit": (code.get("commit") or "")[:12] or None,
        "code_dirty": code.get("dirty"),
        "prunebench_version": code.get("version"),
        "torch_version": env.get("torch"),
        "cpu_model": env.get("cpu_model"),
        "cpu_capability": env.get("cpu_capability"),
        "determinism": (env.get("determinism") or {}).get("mode"),
        "determinism_knobs": " ".join(f"{k}={v}" for k, v in sorted(knobs.items())) or None,
        "gpu": env.get("gpu"),
        "source_hash": (record.get("source") or {}).get("hash"),
    }


__all__ = ["COLUMNS", "code_version", "columns", "env_id", "environment", "run_record"]
