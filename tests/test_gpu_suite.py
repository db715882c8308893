"""The GPU suite (benchmarks/gpu_suite.py) rehearsed on the CPU at tiny sizes, so that the one
prepared GPU run does not fail on a typo: every part runs and lands in the JSON, the targets
and the device are recorded, a part that raises or hangs is recorded and the JSON is still
written, and the markdown section renders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

PARTS = ("pytest", "grid", "train", "mnist_grid", "measure")


def _run(out: Path, *extra: str, env: dict | None = None) -> dict:
    cmd = [sys.executable, str(SUITE), "--device", "cpu", "--tiny", "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu_suite") / "gpu_suite.json"
    _run(out)
    return out


def test_every_part_runs_on_the_cpu_and_lands_in_the_json(rehearsal):
    report = json.loads(rehearsal.read_text())
    assert set(report["parts"]) == set(PARTS)
    for name, part in report["parts"].items():
        assert part["status"] == "ok", f"{name}: {part['error']}"
        assert part["result"] is not None and part["wall_s"] > 0
    env = report["environment"]
    assert env["device"] == "cpu" and env["torch"] and "commit" in env
    assert report["parts"]["pytest"]["result"]["skipped"] >= 1  # no GPU: all skipped
    train = report["parts"]["train"]["result"]["models"]
    for entry in train.values():
        assert not entry["errors"]
        assert set(entry["variants"]) == {"dataloader_fp32", "eager_fp32", "compiled",
                                          "compiled_bf16"}
        for v in entry["variants"].values():
            assert v["samples_per_s"]["median"] > 0 and v["profile_top_ops"]
    grid = report["parts"]["mnist_grid"]["result"]
    # the plan's trainings: dense, pruned-at-init and gradual alone or stacked, lottery levels
    assert sum(k["epochs"] for k in grid["by_stack_size"].values()) > 1000
    assert grid["estimate_minutes"]["median"] > 0 and "extrapolation" in grid
    measured = report["parts"]["measure"]["result"]["models"]
    assert all("dense" in m["latency"] for m in measured.values())
    targets = report["targets"]
    assert set(targets) == {"cifar_training_vs_dataloader", "lenet_step_ms",
                            "mnist_grid_minutes"}
    for t in targets.values():
        assert t["value"] is not None and isinstance(t["met"], bool)
        if not t["met"]:
            assert t["profile"]  # where the time goes


def test_the_markdown_section_renders_from_the_json(rehearsal):
    from gpu_suite import gpu_markdown

    text = gpu_markdown(rehearsal)
    assert text.startswith("## GPU")
    for needle in ("driver", "| pytest | ok |", "lenet_300_100", "mnist_grid_minutes",
                   "MNIST grid", "Rehearsal"):
        assert needle in text, needle


def test_a_failing_and_a_hanging_part_are_recorded_and_the_json_still_written(tmp_path):
    out = tmp_path / "suite.json"
    report = _run(out, "--parts", "grid", "measure", "--budget", "grid=3",
                  env={"GPU_SUITE_FAIL": "measure", "GPU_SUITE_HANG": "grid"})
    grid, measure = report["parts"]["grid"], report["parts"]["measure"]
    assert grid["status"] == "timeout" and grid["wall_s"] < 20
    assert grid["result"] == {"injected": "hang"}  # what it saved before hanging
    assert measure["status"] == "error" and "failure injected" in measure["error"]
    assert report["targets"]["lenet_step_ms"]["met"] is False
    from gpu_suite import gpu_markdown

    assert "Not completed" in gpu_markdown(out)
