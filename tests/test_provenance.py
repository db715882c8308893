"""Provenance in every run, checksums over every file of a run, source hashes and method
versions (issue #23, items 1, 2 and 5): fast, in-process checks. The workflow-level checks
(`prunebench status` and `prunebench rerun` on a real Snakemake run) are in test_status.py.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from prunebench.analysis.aggregate import read_run
from prunebench.analysis.report import provenance_lines
from prunebench.cli import main
from prunebench.config import apply_overrides, read_params
from prunebench.errors import ConfigError
from prunebench.provenance import COLUMNS, columns, env_id
from prunebench.pruning import METHODS
from prunebench.runs import damaged_file
from prunebench.sources import file_hash
from prunebench.status import survey

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
TINY = {
    "runs_root": "runs",
    "studies": {"tiny": {
        "data": {"name": "digits", "val_size": 0.1},
        "model": {"name": "mlp_digits", "kwargs": {"hidden": [16]}},
        "train": {"epochs": 1, "lr": 0.05, "batch_size": 64},
        "finetune": {"epochs": 1, "lr": 0.01},
        "methods": {"snip": {}},
        "sparsities": [0.5],
        "recover": ["finetune"],
        "seeds": [0],
    }},
}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A tiny study's dense, SNIP and fine-tuned runs, made by the CLI in this process."""
    root = tmp_path_factory.mktemp("prov")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(["finetune", "--no-progress"]) == 0
    return root


def run_dirs(root: Path, kind: str) -> list[Path]:
    return sorted(p for p in (root / "runs" / kind).iterdir() if p.is_dir())


def test_every_run_records_the_code_environment_and_source_that_made_it(made):
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                         text=True)
    for kind in ("train", "prune", "recover"):
        (run,) = run_dirs(made, kind)
        record = json.loads((run / "metrics.json").read_text())["provenance"]
        env, code = record["env"], record["code"]
        assert env["torch"] == torch.__version__
        assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert env["threads"] == 1 and env["gpu"] is None  # a CPU run of a 1-thread study
        assert env["mkl"] and env["onednn"].startswith("v")  # parsed from torch's build info
        assert record["env_id"] == env_id(env)
        if git.returncode == 0:
            assert code["commit"] == git.stdout.strip() and isinstance(code["dirty"], bool)
        files = record["source"]["files"]
        assert "prunebench/training/evaluate.py" in files
        assert "prunebench/models/digits.py" in files and "prunebench/data/batching.py" in files
        # Only pruning calls the method; recovery reads what it made (its parent's record).
        assert ("prunebench/pruning/snip.py" in files) == (kind == "prune")
        # One-shot pruning trains nothing: the training loop does not decide its result.
        assert ("prunebench/training/loop.py" in files) == (kind != "prune")


def test_runs_csv_columns_come_from_the_record(made):
    (run,) = run_dirs(made, "recover")
    row = read_run(run)
    record = json.loads((run / "metrics.json").read_text())["provenance"]
    assert {k: row[k] for k in COLUMNS} == columns(record)
    assert row["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert row["source_hash"] == record["source"]["hash"]
    assert columns(None) == dict.fromkeys(COLUMNS)  # a run made before: empty, not an error


def test_an_edited_metrics_file_is_caught_and_refused_by_aggregate(made, tmp_path):
    (run,) = run_dirs(made, "recover")
    copy = tmp_path / run.name
    import shutil

    shutil.copytree(run, copy)
    assert damaged_file(copy) is None
    metrics = json.loads((copy / "metrics.json").read_text())
    assert "metrics.json" in json.loads((copy / "checksums.json").read_text())
    metrics["top1"] = 0.999  # a hand-edited number
    (copy / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    assert damaged_file(copy) == "metrics.json"
    with pytest.raises(ConfigError, match=r"metrics\.json does not match .*prunebench rerun"):
        read_run(copy)
    (copy / "sparsity.json").unlink()  # a deleted file is as bad
    (copy / "metrics.json").write_text(json.dumps({**metrics, "top1": metrics["top1"]}))
    assert damaged_file(copy) in {"metrics.json", "sparsity.json"}


def test_an_edited_metrics_file_makes_the_run_redone(made):
    """The executor's reuse check covers metrics.json too: the run is made again, and the
    number that was edited is gone."""
    (run,) = run_dirs(made, "recover")
    before = json.loads((run / "metrics.json").read_text())
    edited = {**before, "top1": 0.5}
    (run / "metrics.json").write_text(json.dumps(edited, indent=2, sort_keys=True) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(made)
        assert main(["finetune", "--no-progress"]) == 0
    after = json.loads((run / "metrics.json").read_text())
    assert after["top1"] == before["top1"] and damaged_file(run) is None


def test_the_source_hash_ignores_comments_and_docstrings_but_not_code(tmp_path):
    base = 'def f(x):\n    """Doc."""\n    return x + 1  # add one\n'
    same = '# header\n\ndef f(x):\n    """Other words."""\n\n    return x + 1\n'
    other = 'def f(x):\n    """Doc."""\n    return x + 2  # add one\n'
    hashes = []
    for i, text in enumerate((base, same, other)):
        path = tmp_path / f"m{i}.py"
        path.write_text(text)
        hashes.append(file_hash(path))
    assert hashes[0] == hashes[1] != hashes[2]


def _plan_runs() -> list:
    """Every run of every study (in an empty directory: nothing is made yet)."""
    raw = apply_overrides(read_params(DATA / "plan_params.yaml"), ["scale=all"])
    return [s.run for s in survey(raw)]


def test_bumping_a_methods_version_renames_exactly_its_runs_and_their_descendants(
        monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    before = _plan_runs()
    entry = METHODS.get("snip")
    monkeypatch.setitem(METHODS._items, "snip", dataclasses.replace(entry, version=2))
    after = _plan_runs()
    assert [r.stage for r in before] == [r.stage for r in after]  # the same runs, in order
    renamed, stages = set(), set()
    for old, new in zip(before, after):
        is_snip = old.meta.get("method") == "snip"
        from_renamed = any(p.path in renamed for p in old.parents)
        assert (old.path != new.path) == (is_snip or from_renamed), (old.path, old.meta)
        if old.path != new.path:
            renamed.add(old.path)
            stages.add(old.stage)
    # SNIP's pruned runs, what recovers them, and their benchmarks; nothing else.
    assert {"prune", "finetune", "benchmark"} <= stages
    assert 0 < len(renamed) < len(before) / 4


def test_a_method_version_must_be_a_positive_int():
    from prunebench.pruning.base import register_method

    with pytest.raises(ValueError, match="version must be an int >= 1"):
        register_method("never_registered", when="trained", version=0)


def _table(**envs) -> pd.DataFrame:
    rows = []
    for env, (n, commit, knobs) in envs.items():
        rows += [{"env_id": env, "cpu_model": "CPU " + env, "cpu_capability": "AVX2",
                  "determinism": knobs, "torch_version": "2.13.0", "gpu": None,
                  "code_commit": commit, "code_dirty": False}] * n
    return pd.DataFrame(rows)


def test_the_report_lists_environments_and_warns_when_a_study_mixes_them():
    one = provenance_lines(_table(a=(3, "abc", "native")))
    assert "`a`: CPU a (AVX2), torch 2.13.0, native: 3 runs" in one and "Warning" not in one
    mixed = provenance_lines(_table(a=(2, "abc", "native"), b=(1, "def", "native")))
    assert "2 environments" in mixed and "2 code versions" in mixed
    legacy = pd.DataFrame({"env_id": [None, None]})
    assert "not recorded" in provenance_lines(legacy)


def test_a_run_on_a_gpu_records_its_name_and_driver(monkeypatch):
    """No GPU here: the CUDA calls are faked (a process that used a GPU has a CUDA context);
    without NVML the driver is None, not an error."""
    from prunebench import provenance

    cpu = provenance.environment()
    assert cpu["gpu"] is None and cpu["gpu_driver"] is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"NVIDIA H100 80GB HBM3 #{i}")
    monkeypatch.setattr(provenance, "_nvml_driver_version", lambda: "550.54.15")
    gpu = provenance.environment()
    assert gpu["gpu"] == "NVIDIA H100 80GB HBM3 #0" and gpu["gpu_driver"] == "550.54.15"
    assert provenance.env_id(gpu) != provenance.env_id(cpu)  # another environment
    assert columns({"env": gpu, "env_id": "x"})["gpu"] == "NVIDIA H100 80GB HBM3 #0"
    monkeypatch.setattr(provenance, "_nvml_driver_version", lambda: None)  # no NVML
    assert provenance.environment()["gpu_driver"] is None
