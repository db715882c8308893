"""Masks, scopes, magnitude/random pruning and the lottery-ticket loop."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from prunebench.config import Study
from prunebench.study import parse_study
from prunebench.errors import ConfigError
from prunebench.pruning import (
    METHODS,
    PruneContext,
    Scope,
    global_topk_mask,
    layerwise_topk_mask,
    load_mask,
    save_mask,
    sparsity_report,
)
from prunebench.context import StudyContext
from prunebench.executor import Executor
from prunebench.stages import STAGES
from prunebench.stages.base import dense_run
from prunebench.pruning.lottery import lottery_schedule
from prunebench.stages.lottery import level_run, reinit_run, rewind_weights


def model(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 6 * 6, 33), nn.ReLU(), nn.Linear(33, 10),
    )


def prune(name, m, sparsity, **options):
    method = METHODS.get(name)
    ctx = PruneContext(m, Scope(), method.resolve_options(options), torch.Generator().manual_seed(0))
    return method(ctx, sparsity)


def test_scope_selects_conv_linear_weights_only_and_can_drop_first_last():
    m = model()
    assert list(Scope().params(m)) == ["0.weight", "4.weight", "6.weight"]
    assert list(Scope(exclude_first=True).params(m)) == ["4.weight", "6.weight"]
    assert list(Scope(exclude_first=True, exclude_last=True).params(m)) == ["4.weight"]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.8, 0.97])
@pytest.mark.parametrize("name", ["global_magnitude", "layer_magnitude", "random"])
def test_achieved_sparsity_matches_target(name, sparsity):
    mask = prune(name, model(), sparsity)
    report = sparsity_report(mask)
    total = report["prunable_total"]
    pruned = total - report["prunable_nonzero"]
    assert abs(pruned - sparsity * total) <= (len(mask) if name != "global_magnitude" else 1)
    if name != "global_magnitude":
        for layer in report["per_layer"].values():  # within one weight per layer
            assert abs((layer["total"] - layer["nonzero"]) - sparsity * layer["total"]) <= 1


def test_global_magnitude_keeps_largest_weights_across_layers():
    m = model()
    mask = prune("global_magnitude", m, 0.7)
    params = Scope().params(m)
    kept = torch.cat([params[n].detach().abs()[k] for n, k in mask.items()])
    dropped = torch.cat([params[n].detach().abs()[~k] for n, k in mask.items()])
    assert kept.min() >= dropped.max()


def test_layer_magnitude_keeps_largest_within_each_layer():
    m = model()
    mask = prune("layer_magnitude", m, 0.6)
    for name, p in Scope().params(m).items():
        assert p.detach().abs()[mask[name]].min() >= p.detach().abs()[~mask[name]].max()


def test_current_mask_is_respected_and_counts_toward_target():
    scores = {"a": torch.arange(10.0), "b": torch.arange(10.0) + 0.5}
    current = {"a": torch.ones(10, dtype=torch.bool), "b": torch.ones(10, dtype=torch.bool)}
    current["b"][9] = False  # the largest score is already pruned
    mask = global_topk_mask(scores, 0.5, current)
    assert not mask["b"][9]
    assert int(mask["a"].sum() + mask["b"].sum()) == 10
    per_layer = layerwise_topk_mask(scores, {"a": 0.2, "b": 0.5}, current)
    assert int(per_layer["a"].sum()) == 8 and int(per_layer["b"].sum()) == 5


def test_random_is_seeded_and_can_match_another_allocation():
    m = model()
    a, b = prune("random", m, 0.8), prune("random", m, 0.8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    matched = prune("random", m, 0.8, match="global_magnitude")
    reference = prune("global_magnitude", m, 0.8)
    ref_layers = sparsity_report(reference)["per_layer"]
    for name, layer in sparsity_report(matched)["per_layer"].items():
        assert layer["nonzero"] == ref_layers[name]["nonzero"]
    assert any(not torch.equal(matched[k], reference[k]) for k in matched)


def test_mask_roundtrip(tmp_path):
    mask = prune("global_magnitude", model(), 0.5)
    save_mask(mask, tmp_path / "mask.pt")
    loaded = load_mask(tmp_path / "mask.pt")
    assert loaded.keys() == mask.keys() and all(torch.equal(loaded[k], mask[k]) for k in mask)


def test_unknown_method_and_options_are_rejected():
    with pytest.raises(ConfigError, match="allowed: .*global_magnitude"):
        METHODS.get("magic")
    with pytest.raises(ConfigError, match="methods.random.colour"):
        METHODS.get("random").resolve_options({"colour": 1})
    with pytest.raises(ConfigError, match="prune_fraction"):
        METHODS.get("lottery").resolve_options({"prune_fraction": 1.5})


def tiny_study(**methods) -> Study:
    return parse_study("tiny", {
        "data": {"name": "digits"},
        "model": {"name": "mlp_digits"},
        "train": {"epochs": 2, "batch_size": 128, "lr": 0.05},
        "finetune": {"epochs": 1},
        "methods": methods or {"lottery": {"prune_fraction": 0.5}},
        "sparsities": [0.8],
        "seeds": [0],
    })


def test_lottery_rewinds_survivors_to_initial_weights_exactly(tmp_path):
    study = tiny_study(lottery={"prune_fraction": 0.5, "reinit_control": True})
    ex = Executor(StudyContext(study, tmp_path), "cpu", progress=False)
    entry = study.method("lottery")
    schedule = lottery_schedule(entry.options["prune_fraction"], 0.8)
    assert schedule == pytest.approx([0.5, 0.8])  # 0.75 -> 0.8 would be a sliver
    level = ex.ensure(level_run(ex.ctx, entry, schedule, 0))
    reinit = ex.ensure(reinit_run(ex.ctx, level))
    mask = load_mask(level.path / "mask.pt")
    assert sparsity_report(mask)["weight_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert level_run(ex.ctx, entry, [0.5], 0).done
    # Pruned weights stay exactly zero after retraining, and masks are nested.
    trained = torch.load(level.path / "model.pt", weights_only=True)
    previous = load_mask(level_run(ex.ctx, entry, [0.5], 0).path / "mask.pt")
    for name, m in mask.items():
        assert torch.all(trained[name][~m] == 0)
        assert not torch.any(m & ~previous[name])
    assert reinit.metrics()["weight_sparsity"] == pytest.approx(0.8, abs=1e-3)
    again = STAGES["lottery"].runs(ex.ctx)
    assert [r.path for r in again] == [level.path, reinit.path]
    assert all(r.done for r in again)


def test_lottery_level_starts_from_init_times_mask(tmp_path, monkeypatch):
    """Capture the weights each level trains from: survivors equal the init exactly."""
    import prunebench.executor as runs

    study = tiny_study(lottery={"prune_fraction": 0.5, "reinit_control": False})
    ex = Executor(StudyContext(study, tmp_path), "cpu", progress=False)
    init = torch.load(ex.ensure(dense_run(ex.ctx, 0)).path / "init.pt", weights_only=True)
    starts = []
    real_train = runs.train

    def spy(model, data, cfg, **kw):
        if kw.get("mask") is not None:
            starts.append(({k: v.clone() for k, v in model.state_dict().items()}, kw["mask"]))
        return real_train(model, data, cfg, **kw)

    monkeypatch.setattr(runs, "train", spy)
    ex.ensure(level_run(ex.ctx, study.method("lottery"), lottery_schedule(0.5, 0.9), 0))
    assert len(starts) == 3
    for state, mask in starts:
        for name, m in mask.items():
            assert torch.equal(state[name][m], init[name][m])
            assert torch.all(state[name][~m] == 0)


def test_late_rewinding_uses_weights_at_iteration_k(tmp_path):
    study = tiny_study(lottery={"prune_fraction": 0.5, "rewind_iteration": 3})
    ex = Executor(StudyContext(study, tmp_path), "cpu", progress=False)
    dense = ex.ensure(dense_run(ex.ctx, 0))
    init = torch.load(dense.path / "init.pt", weights_only=True)
    rewound = rewind_weights(ex, dense, 0, 3)
    assert any(not torch.equal(rewound[k], init[k]) for k in init)
    assert all(torch.equal(rewound[k], v) for k, v in rewind_weights(ex, dense, 0, 3).items())


def test_lower_target_than_current_mask_is_an_error_not_a_revival():
    scores = {"a": torch.arange(10.0)}
    current = {"a": torch.arange(10) >= 5}  # 50 % already pruned
    with pytest.raises(ConfigError, match="never come back"):
        global_topk_mask(scores, 0.3, current)
    with pytest.raises(ConfigError, match="never come back"):
        layerwise_topk_mask(scores, 0.3, current)


@pytest.mark.parametrize("written", [
    lambda i: round(1 - 0.8 ** i, 12),  # as a user writes them: 0.2, 0.36, 0.488, ...
    lambda i: 1 - 0.8 ** i,             # as code computes them: 0.3599999999999999, ...
])
def test_lottery_chains_share_the_levels_their_targets_name(tmp_path, written):
    """Every level of a 20 %-per-round chain is a target: each level is one run, which the
    chains to later targets pass through, whichever float spelling the targets have."""
    targets = [written(i) for i in range(1, 6)]
    study = tiny_study(lottery={"prune_fraction": 0.2, "reinit_control": False})
    study = dataclasses.replace(study, sparsities=tuple(targets))
    ex = Executor(StudyContext(study, tmp_path), "cpu", progress=False)
    runs = STAGES["lottery"].runs(ex.ctx)
    assert [r.description["levels"] for r in runs] == [targets[:i] for i in range(1, 6)]
    for shorter, longer in zip(runs, runs[1:]):
        assert longer.spec.previous.path == shorter.path  # one run per level, shared


@pytest.mark.parametrize("fraction, target, expected", [
    (0.2, 0.8, [0.2, 0.36, 0.488, 0.5904, 0.67232, 0.737856, 0.8]),  # no 0.79 -> 0.80 round
    (0.2, 0.36, [0.2, 0.36]),
    (0.5, 0.5, [0.5]),
    (0.5, 0.9, [0.5, 0.75, 0.9]),  # 0.875 -> 0.9 would prune a fifth of a round's worth
    (0.2, 0.0, []),
])
def test_lottery_schedule_never_ends_on_a_sliver(fraction, target, expected):
    levels = lottery_schedule(fraction, target)
    assert levels == pytest.approx(expected)
    densities = [1.0] + [1.0 - s for s in levels]
    rounds = [1.0 - b / a for a, b in zip(densities, densities[1:])]
    assert all(fraction / 2 - 1e-9 <= r <= 1.5 * fraction + 1e-9 for r in rounds)
