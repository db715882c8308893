"""Layer sensitivity analysis, the sensitivity-based sparsity allocation, and its CLI/runs."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch
import yaml
from torch import nn

from prunebench.cli import main
from prunebench.study import parse_study
from prunebench.data import iterate_batches
from prunebench.errors import ConfigError
from prunebench.plan import study_jobs
from prunebench.pruning import METHODS, PruneContext, Scope, sparsity_report
from prunebench.pruning.mask import keep_count
from prunebench.pruning.sensitivity import allocate_sparsity, batch_evaluator, layer_sensitivity
from prunebench.context import StudyContext
from prunebench.executor import Executor
from prunebench.training import evaluate


def toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, 6, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 0).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, x, y


def test_sweep_values_equal_pruning_one_layer_and_evaluating():
    model, x, y = toy()
    before = copy.deepcopy(model.state_dict())
    rows = layer_sensitivity(model, Scope(), batch_evaluator(lambda: iterate_batches(x, y, 64)),
                             sweep=(0.25, 0.5, 0.9))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    assert len(rows) == 3 * 4
    for row in rows:
        direct = copy.deepcopy(model)
        w = dict(direct.named_parameters())[row["layer"]]
        n_pruned = w.numel() - keep_count(w.numel(), row["sparsity"])
        with torch.no_grad():
            w.view(-1)[w.detach().abs().flatten().argsort()[:n_pruned]] = 0.0
        expected = evaluate(direct, x, y)
        assert row["layer_params"] == w.numel()
        assert row["top1"] == pytest.approx(expected["top1"])
        assert row["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def curve_rows(curves: dict[str, list[float]], sweep, sizes):
    """Rows for layers whose top-1 at sweep[i] is 1 - drop[i] (and loss = drop)."""
    rows = []
    for name, drops in curves.items():
        for s, d in zip((0.0, *sweep), (0.0, *drops)):
            rows.append({"layer": name, "layer_params": sizes[name], "sparsity": s,
                         "top1": 1.0 - d, "loss": d})
    return rows


def predicted_drop(curves, sweep, allocation):
    return sum(_interp((0.0, *sweep), (0.0, *curves[name]), s) for name, s in allocation.items())


def _interp(xs, ys, s):
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        if x0 <= s <= x1:
            return y0 + (s - x0) / (x1 - x0) * (y1 - y0)
    raise AssertionError(s)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("sparsity", [0.3, 0.7, 0.9])
def test_allocation_hits_the_count_respects_the_cap_and_beats_uniform(seed, sparsity):
    g = torch.Generator().manual_seed(seed)
    sweep = (0.2, 0.4, 0.6, 0.8, 0.9, 0.95)
    sizes = {f"l{i}.weight": int(n) for i, n in enumerate(torch.randint(50, 3000, (4,), generator=g))}
    # Convex, increasing drop curves of random steepness.
    steepness = {name: float(torch.rand((), generator=g)) for name in sizes}
    curves = {name: [steepness[name] * s ** 3 for s in sweep] for name in sizes}
    allocation = allocate_sparsity(curve_rows(curves, sweep, sizes), sizes, sparsity, 0.93)
    total = sum(sizes.values())
    pruned = [round(allocation[n] * sizes[n]) for n in sizes]
    assert sum(pruned) == total - keep_count(total, sparsity)  # exact global count
    for name, n in sizes.items():
        assert allocation[name] <= 0.93
        assert keep_count(n, allocation[name]) == n - round(allocation[name] * n)  # whole weights
    uniform = {name: sparsity for name in sizes}
    assert predicted_drop(curves, sweep, allocation) <= predicted_drop(curves, sweep, uniform) + 1e-9


def test_allocation_fails_when_the_caps_cannot_reach_the_target():
    sizes = {"a": 100, "b": 100}
    rows = curve_rows({"a": [0.0, 0.1], "b": [0.0, 0.1]}, (0.5, 0.9), sizes)
    with pytest.raises(ConfigError, match="max_layer_sparsity"):
        allocate_sparsity(rows, sizes, 0.85, max_layer_sparsity=0.8)


def redundant_and_sensitive():
    """Layer 0: an identity with tiny off-diagonal noise (its 8 large weights are all that
    matters, so pruning up to 7/8 of it changes nothing). Layer 1: sums all 8 features with
    equal-magnitude weights, so every pruned weight loses information."""
    g = torch.Generator().manual_seed(0)
    first = nn.Linear(8, 8, bias=False)
    last = nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.eye(8) + 1e-3 * torch.rand(8, 8, generator=g))
        ones = 1.0 + 0.01 * torch.rand(8, generator=g)
        last.weight.copy_(torch.stack([ones, -ones]))
    x = torch.randn(400, 8, generator=g)
    y = (x.sum(1) < 0).long()
    return nn.Sequential(first, last), x, y


def test_insensitive_layer_gets_more_sparsity_than_sensitive_one():
    model, x, y = redundant_and_sensitive()
    batches = lambda: iterate_batches(x, y, 100)  # noqa: E731
    rows = layer_sensitivity(model, Scope(), batch_evaluator(batches))
    by_layer = {(r["layer"], r["sparsity"]): r["top1"] for r in rows}
    assert by_layer[("0.weight", 0.8)] == by_layer[("0.weight", 0.0)] == 1.0
    assert by_layer[("1.weight", 0.5)] < 0.95
    method = METHODS.get("sensitivity")
    ctx = PruneContext(model, Scope(), method.resolve_options({}), val_batches=batches)
    mask = method(ctx, 0.5)
    report = sparsity_report(mask)
    assert report["prunable_total"] - report["prunable_nonzero"] == 40  # exact count of 80
    layers = report["per_layer"]
    assert layers["0.weight"]["weight_sparsity"] > layers["1.weight"]["weight_sparsity"]
    assert layers["0.weight"]["weight_sparsity"] <= 56 / 64  # only the noise went
    # The method needs held-out batches.
    with pytest.raises(ConfigError, match="validation batches"):
        method(PruneContext(model, Scope(), method.resolve_options({})), 0.5)
    with pytest.raises(ConfigError, match="methods.sensitivity.sweep"):
        method.resolve_options({"sweep": [0.5, 0.3]})



def test_given_rows_are_allocated_from_without_evaluating_the_model():
    model, x, y = redundant_and_sensitive()
    batches = lambda: iterate_batches(x, y, 100)  # noqa: E731
    method = METHODS.get("sensitivity")
    options = method.resolve_options({"sweep": [0.25, 0.5, 0.75, 0.875]})
    rows = layer_sensitivity(model, Scope(), batch_evaluator(batches), options["sweep"])
    measured = method(PruneContext(model, Scope(), options, val_batches=batches), 0.5)
    # No validation batches: evaluating the model would raise.
    given = method(PruneContext(model, Scope(), options, sensitivity=rows), 0.5)
    assert given.keys() == measured.keys()
    assert all(torch.equal(given[n], measured[n]) for n in given)
    # The allocation follows the rows: swap the two layers' curves and it swaps too.
    swapped = [{**r, "layer": {"0.weight": "1.weight", "1.weight": "0.weight"}[r["layer"]]}
               for r in rows]
    layers = sparsity_report(method(PruneContext(model, Scope(), options, sensitivity=swapped),
                                    0.5))["per_layer"]
    assert layers["0.weight"]["weight_sparsity"] < layers["1.weight"]["weight_sparsity"]
    # Rows of another sweep are not silently used for this one.
    with pytest.raises(ConfigError, match="methods.sensitivity.sweep"):
        method(PruneContext(model, Scope(), method.resolve_options({}), sensitivity=rows), 0.5)


TINY = {
    "runs_root": "runs",
    "studies": {"tiny": {
        "data": {"name": "digits"},
        "model": {"name": "mlp_digits"},
        "train": {"epochs": 2, "batch_size": 128, "lr": 0.05},
        "finetune": {"epochs": 1},
        "methods": {"global_magnitude": {}, "sensitivity": {"sweep": [0.3, 0.6, 0.9, 0.98]}},
        "sparsities": [0.8],
        "seeds": [0],
    }},
}


def test_cli_sensitivity_writes_curves_and_feeds_the_prune_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["sensitivity", "--no-progress", "--manifest", "m.json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["kind"] == "sensitivity" and line["seed"] == 0
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["command"] == "sensitivity" and [r["path"] for r in manifest["runs"]] == [line["path"]]
    run_dir = tmp_path / line["path"]
    with open(run_dir / "sensitivity.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["layer", "layer_params", "sparsity", "top1", "loss"]
    assert len(rows) == 3 * 5 and {r["layer"] for r in rows} == {"1.weight", "3.weight", "5.weight"}
    assert (run_dir / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_top1"] == pytest.approx(float(rows[0]["top1"]))
    assert set(metrics["sparsity_at_top1_drop"]) == {"1.weight", "3.weight", "5.weight"}
    config = json.loads((run_dir / "config.json").read_text())
    train_config = json.loads((tmp_path / "runs/train").glob("*/config.json").__next__().read_text())
    assert config["config"]["parent"] == train_config["config"]  # parent: the dense run

    def measure_again(*args, **kwargs):
        raise AssertionError("the prune job measured the curves again")

    # The prune job allocates from the sensitivity run's rows; it does not measure them again.
    monkeypatch.setattr("prunebench.pruning.sensitivity.layer_sensitivity", measure_again)
    assert main(["finetune", "--method", "sensitivity", "--no-progress"]) == 0
    fine = json.loads(capsys.readouterr().out)
    total = 8192 + 8192 + 640
    assert fine["weight_sparsity"] == pytest.approx(1 - keep_count(total, 0.8) / total)

    assert main(["sensitivity", "--method", "global_magnitude", "--no-progress"]) == 2
    assert "has no `sensitivity` runs" in capsys.readouterr().err

    study = parse_study("tiny", TINY["studies"]["tiny"])
    jobs = {(j.stage, j.label): j for j in study_jobs(study, "runs", "jobs")}
    sens, prune = jobs[("sensitivity", "sensitivity")], jobs[("prune", "sensitivity")]
    assert sens.runs == (line["path"],) and sens.inputs == (jobs[("train", "dense")].manifest,)
    assert sens.manifest in prune.inputs
    assert ("sensitivity", "global_magnitude") not in jobs


def test_val_batches_fall_back_to_a_training_slice_without_a_val_split(tmp_path):
    study = parse_study("tiny", {**TINY["studies"]["tiny"], "data": {"name": "digits", "val_size": 0}})
    ex = Executor(StudyContext(study, tmp_path), "cpu")
    assert len(ex.data.val_y) == 0
    seen = torch.cat([y for _, y in ex.val_batches()()])
    n = math.floor(0.1 * len(ex.data.train_y))
    assert torch.equal(seen, ex.data.train_y[-n:])
