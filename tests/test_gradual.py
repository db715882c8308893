"""Gradual magnitude pruning: the schedules, the pruning step, the callback inside training,
and the run from the dense initialisation."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from prunebench.config import TrainConfig
from prunebench.study import parse_study
from prunebench.data import DataSplits
from prunebench.errors import ConfigError
from prunebench.plan import study_jobs
from prunebench.pruning import METHODS, PruneContext, Scope, load_mask, sparsity_report
from prunebench.pruning.gradual import GradualPruning, resolve_schedule, scheduled_sparsity
from prunebench.pruning.mask import keep_count
from prunebench.context import StudyContext
from prunebench.executor import Executor
from prunebench.stages.base import dense_run
from prunebench.stages.train import during_training_run
from prunebench.training import train


def toy_data(n=256, d=12, classes=4, seed=0) -> DataSplits:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    x = (centers[y] + torch.randn(n, d, generator=g)).view(n, 1, 3, 4)
    return DataSplits("toy", classes, (1, 3, 4), x[:192], y[:192], x[192:224], y[192:224],
                      x[224:], y[224:], None)


def toy_model(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))


def step(ctx_model, sparsity, mask=None, **options):
    method = METHODS.get("gradual_magnitude")
    ctx = PruneContext(ctx_model, Scope(), method.resolve_options(options), mask=mask)
    return method(ctx, sparsity)


@pytest.mark.parametrize("t,cubic,linear", [
    (0, 0.1, 0.1), (10, 0.1, 0.1), (35, 0.9 - 0.8 * 0.75 ** 3, 0.3), (60, 0.8, 0.5),
    (85, 0.9 - 0.8 * 0.25 ** 3, 0.7), (110, 0.9, 0.9), (500, 0.9, 0.9),
])
def test_schedules_follow_their_formulas(t, cubic, linear):
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 with t0 = 10, n dt = 100, s_i = .1, s_f = .9
    assert scheduled_sparsity(t, 0.9, 10, 110, 0.1, "cubic") == pytest.approx(cubic)
    assert scheduled_sparsity(t, 0.9, 10, 110, 0.1, "linear") == pytest.approx(linear)


def test_schedule_defaults_and_pruning_iterations():
    s = resolve_schedule({}, 0.8, steps_per_epoch=10, epochs=20)
    # Defaults: from 10% to 75% of training, once per epoch, cubic, from dense.
    assert (s.start_iteration, s.end_iteration, s.frequency, s.schedule) == (20, 150, 10, "cubic")
    assert s.pruning_iterations() == list(range(20, 151, 10))
    s = resolve_schedule({"start_epoch": 0, "end_epoch": 2.5, "frequency": 10, "schedule": "linear"},
                         0.5, steps_per_epoch=10, epochs=3)
    assert s.pruning_iterations() == [0, 10, 20, 25]  # a last, shorter interval ends on t1
    assert [st["weight_sparsity"] for st in s.steps()] == pytest.approx([0, 0.2, 0.4, 0.5])
    with pytest.raises(ConfigError, match="end_epoch .* past the end of training"):
        resolve_schedule({"end_epoch": 4}, 0.5, 10, 3)
    with pytest.raises(ConfigError, match="initial_sparsity"):
        resolve_schedule({"initial_sparsity": 0.6}, 0.5, 10, 3)
    with pytest.raises(ConfigError, match="methods.gradual_magnitude.schedule"):
        METHODS.get("gradual_magnitude").resolve_options({"schedule": "exponential"})
    with pytest.raises(ConfigError, match="frequency"):
        METHODS.get("gradual_magnitude").resolve_options({"frequency": 0})


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_step_thresholds_active_weights_only_and_never_regrows(scope):
    model = toy_model()
    params = Scope().params(model)
    # A current mask that pruned some of the *largest* weights (values left in place): a
    # threshold over active weights must keep them pruned and still hit the count.
    current = {}
    for name, p in params.items():
        m = torch.ones_like(p, dtype=torch.bool)
        m.view(-1)[p.detach().abs().flatten().topk(3).indices] = False
        current[name] = m
    mask = step(model, 0.6, current, scope=scope)
    for name, p in params.items():
        assert not torch.any(mask[name] & ~current[name])  # no regrowth
        a = p.detach().abs()
        if scope == "layer":
            assert int((~mask[name]).sum()) == p.numel() - keep_count(p.numel(), 0.6)
            newly = ~mask[name] & current[name]
            assert a[mask[name]].min() >= a[newly].max()
    if scope == "global":
        total = sum(p.numel() for p in params.values())
        assert sum(int((~m).sum()) for m in mask.values()) == total - keep_count(total, 0.6)
        kept = torch.cat([params[n].detach().abs()[m] for n, m in mask.items()])
        newly = torch.cat([params[n].detach().abs()[~mask[n] & current[n]] for n in mask])
        assert kept.min() >= newly.max()


class Spy:
    """Records the mask after every step and checks pruned weights are exactly zero."""

    def __init__(self, model):
        self.masks = []
        self.mask = None
        self.forwards = 0
        model.register_forward_pre_hook(self.check_before_forward)

    def check_before_forward(self, model, args):
        if self.mask is not None:
            self.forwards += 1
            assert_pruned_zero(model, self.mask)

    def on_step_end(self, state):
        assert_pruned_zero(state.model, state.mask)
        self.mask = {k: v.clone() for k, v in state.mask.items()}
        self.masks.append(self.mask)


def assert_pruned_zero(model, mask):
    params = dict(model.named_parameters())
    for name, m in mask.items():
        assert torch.all(params[name].detach()[~m] == 0), name


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_gradual_pruning_during_training_is_monotone_exact_and_enforced(scope):
    data = toy_data()
    model = toy_model()
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.05, momentum=0.9, weight_decay=1e-3)
    options = METHODS.get("gradual_magnitude").resolve_options(
        {"scope": scope, "start_epoch": 0.5, "end_epoch": 3, "frequency": 4})
    schedule = resolve_schedule(options, 0.9, steps_per_epoch=6, epochs=cfg.epochs)
    pruner = GradualPruning(METHODS.get("gradual_magnitude"), options, Scope(), schedule,
                            torch.Generator().manual_seed(0))
    spy = Spy(model)
    state = train(model, data, cfg, seed=0, mask=pruner.initial_mask(model),
                  callbacks=[pruner, spy], progress=False)
    assert spy.forwards > 0
    sparsities = [sparsity_report(m)["weight_sparsity"] for m in spy.masks]
    assert sparsities[0] == 0.0
    assert all(a <= b for a, b in zip(sparsities, sparsities[1:]))
    for before, after in zip(spy.masks, spy.masks[1:]):
        for name in after:
            assert not torch.any(after[name] & ~before[name])  # each mask within the previous
    final = sparsity_report(state.mask)
    if scope == "global":
        total = final["prunable_total"]
        assert total - final["prunable_nonzero"] == total - keep_count(total, 0.9)
    else:
        for layer in final["per_layer"].values():
            assert layer["total"] - layer["nonzero"] == layer["total"] - keep_count(layer["total"], 0.9)
    # Between pruning steps the sparsity changes only at the scheduled iterations.
    changes = [i + 1 for i in range(1, len(sparsities)) if sparsities[i] != sparsities[i - 1]]
    assert set(changes) <= set(schedule.pruning_iterations())
    assert [h["weight_sparsity"] for h in state.history][-1] == pytest.approx(final["weight_sparsity"])


def digits_study(**options):
    return parse_study("tiny", {
        "data": {"name": "digits"},
        "model": {"name": "mlp_digits"},
        "train": {"epochs": 2, "batch_size": 128, "lr": 0.05},
        "finetune": {"epochs": 1},
        "methods": {"gradual_magnitude": options},
        "sparsities": [0.8],
        "seeds": [0],
    })


def test_during_training_run_trains_from_init_with_the_full_recipe(tmp_path):
    study = digits_study()
    ex = Executor(StudyContext(study, tmp_path), "cpu", progress=False)
    entry = study.method("gradual_magnitude")
    run = ex.ensure(during_training_run(ex.ctx, entry, 0.8, 0))
    dense = dense_run(ex.ctx, 0)
    assert run.parents == (dense,) and dense.done
    assert not (tmp_path / "prune").exists()  # no one-shot prune run
    config = json.loads((run.path / "config.json").read_text())["config"]
    dense_config = json.loads((dense.path / "config.json").read_text())["config"]
    assert {k: config[k] for k in dense_config} == dense_config  # its init, the full recipe
    assert config["method"] == "gradual_magnitude" and config["sparsity"] == 0.8
    assert config["options"] == {} and config["train"]["epochs"] == 2  # defaults: not named
    metrics = run.metrics()
    total = sparsity_report(load_mask(run.path / "mask.pt"))["prunable_total"]
    assert metrics["weight_sparsity"] == pytest.approx(1 - keep_count(total, 0.8) / total)
    weights = torch.load(run.path / "model.pt", weights_only=True)
    for name, m in load_mask(run.path / "mask.pt").items():
        assert torch.all(weights[name][~m] == 0)
    with open(run.path / "history.csv") as fh:
        trajectory = [float(row["weight_sparsity"]) for row in csv.DictReader(fh)]
    assert len(trajectory) == 2 and trajectory[-1] == pytest.approx(metrics["weight_sparsity"])
    schedule = json.loads((run.path / "schedule.json").read_text())
    assert schedule["schedule"] == "cubic" and schedule["steps"][-1]["weight_sparsity"] == 0.8
    # Options are part of the name; the run is reused when nothing changed.
    assert ex.ensure(during_training_run(ex.ctx, entry, 0.8, 0)).path == run.path
    other = digits_study(schedule="linear")
    other_ctx = StudyContext(other, tmp_path)
    assert during_training_run(other_ctx, other.method("gradual_magnitude"), 0.8, 0).path != run.path
    # The plan: the dense training job, then this method's training job that reads it, then
    # the benchmarks of both.
    jobs = study_jobs(study, tmp_path, tmp_path / "jobs")
    assert [(j.stage, j.label) for j in jobs] == [("train", "dense"),
                                                  ("train", "gradual_magnitude"),
                                                  ("benchmark", "dense"),
                                                  ("benchmark", "gradual_magnitude")]
    assert jobs[1].inputs == (jobs[0].manifest,) and jobs[1].runs == (str(run.path),)


def test_options_that_do_not_fit_the_recipe_fail_when_the_study_is_parsed():
    # Past train.epochs = 2: refused before any work, naming the study's key.
    with pytest.raises(ConfigError, match=r"studies\.tiny\.methods\.gradual_magnitude\.end_epoch"):
        digits_study(end_epoch=3)
