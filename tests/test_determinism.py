"""`determinism: portable` (prunebench.determinism): the key is checked and names the runs,
every knob is honoured by the installed torch, and every way a job starts (with the settings
in its environment, the CLI without them, a fork of the job server, a command that restarts
itself) computes the same bits.

What one CPU can show: that each setting is live (a lower one changes what its library
computes; MKL reports its branch), that the pinned values equal this machine's own where its
own is AVX2, and that every start path gives identical weights. That another CPU gives the
same bits cannot be shown here; `test_portable_mode_matches_the_committed_reference` is the
check that does it wherever these tests run on another x86-64 CPU with these versions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from prunebench import determinism, launcher
from prunebench.config import apply_overrides
from prunebench.errors import ConfigError
from prunebench.plan import plan
from prunebench.study import json_schema, validate_params

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [sys.executable, "-c", "from prunebench.launcher import main; raise SystemExit(main())"]
STUDY = {
    "data": {"name": "digits", "val_size": 0.1},
    "model": {"name": "cnn_digits_bn"},  # conv, BatchNorm and linear layers
    "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "epochs": 1, "batch_size": 64},
    "methods": {"global_magnitude": {}},
    "sparsities": [0.5],
    "recover": ["finetune"],
    "seeds": [0],
}
PORTABLE = {"runs_root": "runs", "studies": {"tiny": {**STUDY, "determinism": "portable"}}}

# What each library computes, hashed apart on inputs that no knob touches (numpy's generator):
# ATen's kernels and random sampler, MKL's gemm, oneDNN's convolution (forward and weight
# gradient), OpenBLAS's product; then two SGD steps of a conv + BatchNorm + linear network in
# the process's mode (`--portable`: determinism.apply first, as a job whose environment
# lacked the settings).
PROBE = """
import hashlib, json, sys
import numpy as np
import torch
from torch import nn
from prunebench import determinism
if "--portable" in sys.argv:
    determinism.apply("portable")

def sha(*arrays):
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(a.detach().numpy().tobytes() if torch.is_tensor(a) else a.tobytes())
    return digest.hexdigest()

rng = np.random.default_rng(0)
a = torch.from_numpy(rng.standard_normal((257, 513), dtype=np.float32))
x = torch.from_numpy(rng.standard_normal((16, 3, 12, 12), dtype=np.float32))
w = torch.from_numpy(rng.standard_normal((8, 3, 3, 3), dtype=np.float32)).requires_grad_()
g = torch.from_numpy(rng.standard_normal((16, 8, 10, 10), dtype=np.float32))
torch.manual_seed(0)
parts = {"aten": sha(torch.randn(1000), torch.exp(a).sum(1), torch.softmax(a, 1)),
         "mkl": sha(a @ a.T),
         "openblas": sha(a.double().numpy() @ a.double().numpy().T)}
with torch.backends.mkldnn.flags(enabled=True):
    y = nn.functional.conv2d(x, w)
    parts["onednn"] = sha(y, torch.autograd.grad(y, w, g)[0])
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
inputs, labels = torch.randn(32, 1, 16, 16), torch.randint(0, 10, (32,))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
for _ in range(2):
    loss = nn.functional.cross_entropy(model(inputs), labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
print(json.dumps({"parts": parts, "step": sha(*model.state_dict().values()),
                  **determinism.describe()}))
"""
# One level below each pinned value. MKL's is its compatible branch, portable mode's own: on
# non-Intel CPUs MKL honours no other (it takes AUTO for SSE2, AVX2, ...).
LOWER = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41",
         "OPENBLAS_CORETYPE": "Sandybridge"}
PART = {"ATEN_CPU_CAPABILITY": "aten", "MKL_CBWR": "mkl", "ONEDNN_MAX_CPU_ISA": "onednn",
        "OPENBLAS_CORETYPE": "openblas"}
# The training step in portable mode, computed on an AMD EPYC (Zen 3, AVX2) with these
# versions: any x86-64 CPU with AVX2 must give it.
REFERENCE = {"torch": "2.13.0+cpu", "numpy": "2.4.6", "cpu": "AMD EPYC", "flags": "avx2 no avx512f",
             "step": "cf09b31bc668ffb4152f2d0dd1526e6b56d94e704f46843364d601704f18468c"}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in determinism.KNOBS and k not in (launcher.ENV_SERVER, determinism.REEXEC)}
    return {**env, **extra}


# ------------------------------------------------------------------------- the key


def test_the_key_is_checked_when_the_study_is_parsed():
    for bad in ("fast", 1, None, True):
        raw = copy.deepcopy(PORTABLE)
        raw["studies"]["tiny"]["determinism"] = bad
        with pytest.raises(ConfigError) as err:
            validate_params(raw)
        message = str(err.value)
        assert "\n" not in message and "studies.tiny.determinism" in message
        assert "native, portable" in message
    assert validate_params(PORTABLE)["tiny"].determinism == "portable"
    native = copy.deepcopy(PORTABLE)
    del native["studies"]["tiny"]["determinism"]
    assert validate_params(native)["tiny"].determinism == "native"
    declared = json_schema()["properties"]["studies"]["additionalProperties"]["properties"]
    assert declared["determinism"]["enum"] == ["native", "portable"]
    assert declared["determinism"]["default"] == "native"
    assert determinism.env_for("native") == {} and determinism.shell_prefix("native") == ""
    assert set(determinism.env_for("portable")) == set(determinism.KNOBS)


def test_a_cpu_without_avx2_is_refused_in_one_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Old Xeon E5-2670\nflags\t\t: fpu sse sse2 avx\n")
    reason = determinism.cpu_refusal(cpuinfo)
    assert reason == ("it needs a CPU with AVX2 and FMA, and this one (Old Xeon E5-2670) "
                      "lacks AVX2, FMA")
    cpuinfo.write_text("model name\t: New\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert determinism.cpu_refusal(cpuinfo) is None


def test_portable_renames_every_run_of_its_study_and_none_of_another():
    two = {"studies": {"a": STUDY, "b": {**STUDY, "seeds": [1]}}}  # no run in common
    before = {j.manifest: j for j in plan(two)}
    after = {j.manifest: j for j in plan(apply_overrides(two, ["studies.a.determinism=portable"]))}
    runs = {name: {study: {r for j in jobs.values() if j.study == study for r in j.runs}
                   for study in "ab"} for name, jobs in (("before", before), ("after", after))}
    assert runs["before"]["a"] and runs["before"]["a"].isdisjoint(runs["after"]["a"])
    assert len(runs["before"]["a"]) == len(runs["after"]["a"])
    assert runs["before"]["b"] == runs["after"]["b"]
    assert {m for m, j in before.items() if j.study == "b"} == \
        {m for m, j in after.items() if j.study == "b"}
    explicit = apply_overrides(two, ["studies.b.determinism=native"])  # the default, unnamed
    assert {m for m, j in before.items()} == {j.manifest for j in plan(explicit)}


# ------------------------------------------------------------------------ the knobs


@pytest.fixture(scope="module")
def probes() -> dict[str, dict]:
    """The probe in fresh processes, side by side: this CPU's own code path, each knob one
    level lower, and portable mode (the settings are applied late in the start paths'
    test, below)."""
    settings = {"native": ({}, ()), "lower": (LOWER, ()),
                "portable": (determinism.env_for("portable"), ("--portable",))}
    procs = {name: subprocess.Popen([sys.executable, "-c", PROBE, *flags], env=clean_env(**env),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (env, flags) in settings.items()}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {stderr}"
        out[name] = json.loads(stdout.splitlines()[-1])
    return out


def test_each_knob_is_honoured_by_the_installed_torch(probes):
    native, lower, pinned = probes["native"], probes["lower"], probes["portable"]
    # A lower setting of each knob changes what its library computes: the library reads it.
    for knob, part in PART.items():
        assert lower["parts"][part] != native["parts"][part], f"{knob}={LOWER[knob]} ignored"
    assert lower["cpu_capability"] == "DEFAULT" and lower["mkl_branch"] == "COMPATIBLE"
    assert set(lower["openblas"].values()) == {"Sandybridge"}
    assert native["mkl_branch"] == "BRANCH_OFF" and pinned["mkl_branch"] == "COMPATIBLE"
    # The other pinned values are what an AVX2 CPU without AVX-512 takes itself.
    if native["cpu_capability"] != "AVX2" or set(native["openblas"].values()) != {"Haswell"}:
        pytest.skip(f"this CPU's own code path is not AVX2 (ATen {native['cpu_capability']}, "
                    f"OpenBLAS {native['openblas']}): pinned and native differ by design")
    for part in ("aten", "onednn", "openblas"):
        assert pinned["parts"][part] == native["parts"][part], part


def test_portable_mode_matches_the_committed_reference(probes):
    """The cross-CPU check: on any x86-64 CPU with AVX2, portable mode gives these bits."""
    import numpy
    import torch

    result = probes["portable"]
    assert result["mode"] == "portable" and result["cpu_capability"] == "AVX2"
    assert result["mkl_branch"] == "COMPATIBLE" and not result["mkldnn"]
    assert not result["nnpack"] and set(result["openblas"].values()) == {"Haswell"}
    assert result["step"] != probes["native"]["step"]
    if (torch.__version__, numpy.__version__) != (REFERENCE["torch"], REFERENCE["numpy"]):
        pytest.skip(f"the reference was computed with torch {REFERENCE['torch']} and numpy "
                    f"{REFERENCE['numpy']}; this is {torch.__version__}, {numpy.__version__}")
    from prunebench.metrics.environment import cpu_model

    same_kind = cpu_model() == REFERENCE["cpu"] and "avx512f" not in (determinism.cpu_flags()
                                                                       or set())
    if result["step"] == REFERENCE["step"] or same_kind:
        assert result["step"] == REFERENCE["step"], (
            f"portable mode trained other bits than the reference on the same kind of CPU: "
            f"{result}")
        return
    # Another kind of CPU: this is the cross-CPU claim the README leaves unverified. A
    # mismatch is reported (pytest's warnings summary), not failed: it is a finding about
    # the libraries on that CPU, to be recorded, not a bug in the code under test.
    warnings.warn(f"portable mode is NOT bit-identical across CPUs: {cpu_model()} trained "
                  f"other bits than the {REFERENCE['cpu']} ({REFERENCE['flags']}) that made the "
                  f"reference: {result['step']} != {REFERENCE['step']}", stacklevel=1)


# --------------------------------------------------------------------- the start paths


def digests(root: Path) -> dict[str, str]:
    """The weights a run saved (init and final), by path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.pt")) if "checkpoints" not in p.parts}


def start(work: Path, params: dict, env: dict[str, str], argv: list[str] | None = None):
    """`prunebench train` of `params` in `work`, started."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.Popen(argv or [*PROMPT, "train", "--no-progress"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, status: int = 0) -> str:
    """Its stderr, once it exited with `status`."""
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == status, stderr
    return stderr


EARLY = "import torch\n\nPRODUCT = torch.ones(4, 4) @ torch.ones(4, 4)  # MKL's first use\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, dict]:
    """The tiny portable study trained every way a job can start, side by side: its weights
    and log by way.

    start:   the settings in the environment at start (a user's own script)
    late:    `prunebench train` without them: the CLI applies them before torch's first op
    forked_env, forked_bare: forks of the job server (which imported torch), the client's
             environment with and without the settings
    early:   `prunebench train` without them, with a plugin that runs torch when imported
             (MKL's branch is fixed before the CLI can pin it): the command starts again
    native:  the same study in native mode, forked
    """
    tmp = tmp_path_factory.mktemp("trained")
    sock = str(tmp / "s.sock")
    server = launcher.start_server(sock, parent=os.getpid(), log_path=str(tmp / "server.log"))
    try:
        procs = {"start": start(tmp / "start", PORTABLE, clean_env(**determinism.env_for(
                     "portable"))),
                 "late": start(tmp / "late", PORTABLE, clean_env())}
        (tmp / "early" / "plugins").mkdir(parents=True)
        (tmp / "early" / "plugins" / "early.py").write_text(EARLY)
        command = str(Path(sys.executable).parent / "prunebench")
        procs["early"] = start(tmp / "early", {**PORTABLE, "plugins": ["plugins/early.py"]},
                               clean_env(), [command, "train", "--no-progress"])
        forked = {"forked_env": (PORTABLE, determinism.env_for("portable")),
                  "forked_bare": (PORTABLE, {}),
                  "native": ({**PORTABLE, "studies": {"tiny": STUDY}}, {})}
        logs = {}
        for name, (params, env) in forked.items():
            logs[name] = finish(start(tmp / name, params, clean_env(
                **env, **{launcher.ENV_SERVER: sock})))
        logs.update({name: finish(proc) for name, proc in procs.items()})
    finally:
        launcher.stop_server(server)
    return {name: {"weights": digests(tmp / name / "runs"), "log": log}
            for name, log in logs.items()}


def test_every_way_a_job_starts_gives_the_same_bits(trained):
    reference = trained["start"]["weights"]
    assert len(reference) == 2  # init.pt and model.pt of the dense run
    for name in ("late", "forked_env", "forked_bare", "early"):
        assert trained[name]["weights"] == reference, name
    for name in ("start", "late", "forked_env", "forked_bare"):
        assert "starting the command again" not in trained[name]["log"], name
    # Native names its runs as before, and trains other bits (MKL's branch, oneDNN's conv).
    native = trained["native"]["weights"]
    assert set(native).isdisjoint(reference)
    model = {k.rsplit("/", 1)[-1]: v for k, v in native.items()}["model.pt"]
    assert model not in reference.values()


def test_a_command_in_which_torch_ran_too_early_starts_again(trained):
    """A plugin that computes when imported fixes MKL's branch before the CLI can pin it:
    `prunebench` starts itself again with the settings (same bits, above)."""
    assert "starting the command again with env ATEN_CPU_CAPABILITY=avx2" in \
        trained["early"]["log"]
    assert "MKL's code branch is BRANCH_OFF" in trained["early"]["log"]


def test_called_from_python_after_torch_ran_it_refuses(tmp_path, monkeypatch):
    """In a Python process that already ran torch (this one), portable mode cannot take
    hold and the CLI cannot start again: one line, exit 2, nothing written."""
    import torch

    from prunebench.cli import main

    torch.backends.cpu.get_cpu_capability()  # ATen's capability is fixed from here on,
    torch.ones(4, 4) @ torch.ones(4, 4)  # and MKL's branch (CNR off)
    for knob in determinism.KNOBS:  # restored after the test, as are torch's switches
        monkeypatch.setenv(knob, "unset")
        monkeypatch.delenv(knob)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PORTABLE))
    switches = torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled()
    try:
        assert main(["train", "--no-progress"]) == 2
    finally:
        torch.backends.mkldnn.enabled = switches[0]
        torch.backends.nnpack.set_flags(switches[1])
    assert not (tmp_path / "runs").exists()


def test_the_pinned_reference_study_names_exactly_its_committed_runs(tmp_path):
    """params.yaml's `digits_cnn_portable` (committed results: the reference another CPU
    checks itself against) must name exactly the runs of its committed tables: same grid,
    same recipes, on the portable path. (It is the default study as it was before its
    five-point grid; editing the default study does not move the reference.)"""
    import pandas as pd

    from prunebench.config import read_params
    from prunebench.context import StudyContext
    from prunebench.stages import STAGES
    from prunebench.study import validate_params

    raw = read_params(ROOT / "params.yaml")
    study = validate_params(raw)["digits_cnn_portable"]
    assert study.determinism == "portable" and study.scale == "reference"
    ctx = StudyContext(study, tmp_path)
    planned = {r.hash for stage in STAGES.values() if stage.result
               for r in stage.runs(ctx) if r.meta.get("result") is not False}
    committed = pd.read_csv(ROOT / "results/studies/digits_cnn_portable/runs.csv")
    assert set(committed["hash"]) == planned