"""Portable determinism: the same bits on any x86-64 CPU with AVX2 (the study key
`determinism: portable`; the default, `native`, lets every library pick its own code path).

Torch's CPU kernels choose their instruction set when they first run: ATen's own kernels by
the CPU's capability (AVX-512 on a Xeon, AVX2 on an EPYC), MKL and oneDNN by theirs, NNPACK
and oneDNN also block their loops by the CPU's cache sizes. So one commit gives different
weights on different CPUs. Portable mode pins each of these before torch runs its first
operation (each library reads its setting once, at its first use):

    ATEN_CPU_CAPABILITY=avx2   ATen's kernels (and the random normal sampler) use their AVX2
                               build, also on AVX-512 CPUs
    MKL_CBWR=COMPATIBLE        MKL's SSE2 branch: the only one MKL documents to give the same
                               results on Intel and non-Intel CPUs. (MKL_CBWR=AVX2 is honoured
                               on Intel CPUs only; on AMD, MKL silently takes its AUTO branch,
                               which is what MKL_VERBOSE reports on an EPYC: `CNR:AUTO`.)
    ONEDNN_MAX_CPU_ISA=AVX2    caps oneDNN, should anything still call it
    OPENBLAS_CORETYPE=Haswell  numpy's and scipy's OpenBLAS (the regression method's LASSO)
                               use their Haswell kernels

and, in the process, turns off torch's oneDNN (mkldnn) and NNPACK convolutions: oneDNN only
promises identical results on an identical platform, and both size their blocks from the
cache sizes. Convolutions then run as ATen's im2col plus MKL's gemm, both pinned above.
The cost is measured in benchmarks/results/determinism_cost.json.

`ensure(mode)` makes the running process compute in the mode: the CLI calls it for every
job (local, forked from the job server, or on a SLURM node) before torch's first operation;
it applies the settings, checks that each is in effect and, where torch ran before they
could apply, starts the `prunebench` command again with them (or refuses, called from
Python). `env_for(mode)` is the environment that gives the mode from a process's start
(for a script of the user's own). The workflow's commands carry no settings of their own: a
prefix there would change every rule's command and make Snakemake rerun the jobs of existing
native results. `describe()` is what a run records of it (`prunebench.provenance`).

This module imports torch only inside its functions: the study parser imports it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from prunebench.errors import ConfigError
from prunebench.options import choice

NATIVE, PORTABLE = "native", "portable"
MODES = (NATIVE, PORTABLE)
OPTION = choice(NATIVE, MODES, "CPU code path of every job: native lets torch, MKL and oneDNN "
                "pick the fastest for the machine (results differ between CPUs); portable "
                "pins ATen to AVX2, MKL to its compatible branch, OpenBLAS to Haswell and "
                "turns off oneDNN and NNPACK convolutions, so that any x86-64 CPU with AVX2 "
                "gives the same bits; part of every run's name when portable")

KNOBS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "OPENBLAS_CORETYPE")
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
}
CPU_FLAGS = ("avx2", "fma")  # ATen's AVX2 build also uses FMA; every AVX2 CPU has both
# Set in the environment of a `prunebench` command that ensure() started again, so that it
# is started again at most once.
REEXEC = "PRUNEBENCH_DETERMINISM_REEXEC"
# MKL's code branches (mkl_cbwr.h: MKL_CBWR_*), as mkl_cbwr_get reports them.
MKL_BRANCHES = {0: "OFF", 1: "BRANCH_OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3",
                7: "SSE4_1", 8: "SSE4_2", 9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512",
                13: "AVX512_MIC_E1", 14: "AVX512_E1"}
MKL_STRICT = 0x10000

log = logging.getLogger("prunebench")
_applied: list[str] = []  # the modes apply() put in this process, for describe()


def check_mode(mode: Any, key: str = "determinism") -> str:
    """`mode` if it is one of MODES, else a one-line ConfigError naming `key`."""
    return OPTION.check(mode, key)


def env_for(mode: str) -> dict[str, str]:
    """The environment variables a process of `mode` must start with (none for native)."""
    return dict(PORTABLE_ENV) if check_mode(mode) == PORTABLE else {}


def shell_prefix(mode: str) -> str:
    """`env VAR=value ... ` to put before a shell command of `mode` ('' for native)."""
    env = env_for(mode)
    if not env:
        return ""
    return "env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " "


# ------------------------------------------------------------------------- the machine


CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The CPU's feature flags (Linux), or None where /proc/cpuinfo cannot tell."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return set(value.split())
    except OSError:
        pass
    return None


def cpu_refusal(cpuinfo: Path = CPUINFO) -> str | None:
    """Why portable mode cannot run on this machine (whose CPU `cpuinfo` describes), or
    None. (ATen would take ATEN_CPU_CAPABILITY=avx2 on any CPU, and crash on one without.)"""
    import platform

    import torch

    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"it pins x86-64 code paths, and this machine is {platform.machine()}"
    flags = cpu_flags(cpuinfo)
    missing = ([f for f in CPU_FLAGS if f not in flags] if flags is not None
               else ([] if torch.cpu._is_avx2_supported() else ["avx2"]))
    if missing:
        from prunebench.metrics.environment import cpu_model

        needed = " and ".join(f.upper() for f in CPU_FLAGS)
        return (f"it needs a CPU with {needed}, and this one ({cpu_model(cpuinfo) or 'unknown'}) "
                f"lacks {', '.join(missing).upper()}")
    if not torch.backends.mkl.is_available():
        return "it pins MKL, and this torch is built without MKL"
    return None


# ------------------------------------------------------------------ what is in effect


def _torch_lib() -> ctypes.CDLL | None:
    import torch

    path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        return ctypes.CDLL(str(path)) if path.exists() else None
    except OSError:
        return None


def mkl_branch() -> str | None:
    """MKL's code branch in effect (`COMPATIBLE`, `AUTO`, `BRANCH_OFF`, ..., `,STRICT`
    appended in strict mode), or None where this torch does not let us ask: MKL's own query
    (`mkl_serv_cbwr_get`, behind the public `mkl_cbwr_get`, which libtorch_cpu does not
    export). MKL reads MKL_CBWR at its first use; asking is one, so ask only once the
    environment is final."""
    lib = _torch_lib()
    get = getattr(lib, "mkl_serv_cbwr_get", None) if lib is not None else None
    if get is None:
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    value = get(-1)  # MKL_CBWR_ALL
    name = MKL_BRANCHES.get(value & ~MKL_STRICT, str(value & ~MKL_STRICT))
    return name + (",STRICT" if value & MKL_STRICT else "")


def openblas_cores() -> dict[str, str]:
    """The core type of every OpenBLAS loaded in this process (numpy's, scipy's), by file
    name. OpenBLAS reads OPENBLAS_CORETYPE when it is loaded; one loaded later reads it then."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return {}
    paths = sorted({line.split()[-1] for line in maps.splitlines()
                    if "openblas" in line.rsplit("/", 1)[-1].lower() and "/" in line})
    cores = {}
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("openblas_get_corename", "scipy_openblas_get_corename64_",
                       "scipy_openblas_get_corename"):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                cores[Path(path).name] = (fn() or b"").decode()
                break
    return cores


def problems(mode: str) -> list[str]:
    """What of `mode` is not in effect in this process (empty: all of it is)."""
    if check_mode(mode) == NATIVE:
        return []
    import torch

    found = []
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != PORTABLE_ENV["ATEN_CPU_CAPABILITY"].upper():
        found.append(f"ATen's CPU capability is {capability}, not "
                     f"{PORTABLE_ENV['ATEN_CPU_CAPABILITY'].upper()}")
    branch = mkl_branch()
    if branch is not None and branch != PORTABLE_ENV["MKL_CBWR"]:
        found.append(f"MKL's code branch is {branch}, not {PORTABLE_ENV['MKL_CBWR']}")
    for lib, core in openblas_cores().items():
        if core.lower() != PORTABLE_ENV["OPENBLAS_CORETYPE"].lower():
            found.append(f"{lib} runs its {core} kernels, not "
                         f"{PORTABLE_ENV['OPENBLAS_CORETYPE']}")
    if torch.backends.mkldnn.enabled or torch._C._get_nnpack_enabled():
        found.append("torch's oneDNN or NNPACK convolutions are on")
    return found


def check(mode: str, key: str = "determinism") -> None:
    """Refuse, with one line naming `key`, a portable `mode` that this machine cannot run
    or that is not in effect in this process (ATen's capability is AVX2, MKL's branch the
    compatible one, OpenBLAS's cores Haswell, oneDNN and NNPACK convolutions off)."""
    if check_mode(mode, key) == NATIVE:
        return
    refusal = cpu_refusal()
    if refusal:
        raise ConfigError(f"{key}: portable cannot run here: {refusal}")
    found = problems(mode)
    if found:
        raise ConfigError(f"{key}: portable is not in effect: {'; '.join(found)}")


def describe(mode: str | None = None) -> dict[str, Any]:
    """What a run records of its code path: the mode (by default, the one apply() or
    ensure() put in this process last, else native), the knobs' values in the environment,
    and what is in effect (ATen's capability, MKL's branch, OpenBLAS's cores, torch's oneDNN
    and NNPACK switches). Asking fixes ATen's capability and MKL's branch: call it after
    ensure()."""
    import torch

    return {
        "mode": mode or (_applied[-1] if _applied else NATIVE),
        "env": {k: os.environ.get(k) for k in KNOBS},
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_branch": mkl_branch(),
        "openblas": openblas_cores(),
        "mkldnn": bool(torch.backends.mkldnn.enabled),
        "nnpack": bool(torch._C._get_nnpack_enabled()),
    }


# ------------------------------------------------------------------------ applying it


def apply(mode: str) -> None:
    """Put `mode`'s settings in this process: its environment (read by each library at its
    first use, so in time only before torch's first operation) and torch's switches."""
    if check_mode(mode) == PORTABLE:
        os.environ.update(PORTABLE_ENV)
    set_switches(mode)


def set_switches(mode: str) -> None:
    """Torch's in-process switches of `mode` (portable: oneDNN and NNPACK convolutions off;
    native leaves them as they are)."""
    _applied.append(check_mode(mode))
    if mode == PORTABLE:
        import torch

        torch.backends.mkldnn.enabled = False
        torch.backends.nnpack.set_flags(False)


def ensure(mode: str, key: str = "determinism") -> None:
    """Make this process compute in `mode`, before its first torch operation.

    Portable: refuse a machine that cannot run it; apply the settings; check that each is in
    effect. Nothing in the `prunebench` command runs a torch operation before it calls this
    (the fork server's children included: tests/test_determinism.py), so the settings take
    hold even when the environment did not have them at start. Where something did (a
    plugin or a model factory that computes when imported or checked), a `prunebench`
    command starts itself again with the settings in its environment, at most once; called
    from Python, it refuses with the command to use instead. A process computes in one mode:
    the libraries read their settings once, so native after portable in one process is not
    native.
    """
    if check_mode(mode, key) == NATIVE:
        apply(mode)
        return
    refusal = cpu_refusal()
    if refusal:
        raise ConfigError(f"{key}: portable cannot run here: {refusal}")
    apply(mode)
    found = problems(mode)
    if not found:
        return
    argv = _command_argv()
    if argv is not None and os.environ.get(REEXEC) != "1":
        log.info("determinism portable: torch ran before its settings could apply (%s); "
                 "starting the command again with %s", "; ".join(found), shell_prefix(mode))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, {**os.environ, REEXEC: "1"})
    raise ConfigError(f"{key}: portable is not in effect ({'; '.join(found)}): something "
                      f"ran torch before its settings could apply; start the process with "
                      f"them: {shell_prefix(mode)}prunebench ...")


def _command_argv() -> list[str] | None:
    """The argv that starts this `prunebench` command afresh, or None when this process is
    not one (a Python session, a test)."""
    prog = sys.argv[0] if sys.argv else ""
    if Path(prog).name == "prunebench" or prog.endswith(os.path.join("prunebench", "cli.py")):
        return [sys.executable, "-m", "prunebench.cli", *sys.argv[1:]]
    return None


__all__ = ["KNOBS", "MODES", "NATIVE", "OPTION", "PORTABLE", "PORTABLE_ENV", "apply", "check",
           "cpu_refusal", "describe", "ensure", "env_for", "problems", "set_switches",
           "shell_prefix"]
