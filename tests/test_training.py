"""Masked training, schedules, determinism and crash-resume."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from prunebench.config import TrainConfig
from prunebench.data import DataSplits
from prunebench.pruning import PruneContext, Scope, METHODS, apply_mask
from prunebench.training import evaluate, lr_factor, make_optimizer, train


def toy_data(n=256, d=12, classes=4, seed=0) -> DataSplits:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g)
    x = x.view(n, 1, 3, 4)
    return DataSplits("toy", classes, (1, 3, 4), x[:192], y[:192], x[192:224], y[192:224],
                      x[224:], y[224:], None)


def toy_model(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))


def half_mask(model) -> dict:
    ctx = PruneContext(model, Scope())
    return METHODS.get("global_magnitude")(ctx, 0.5)


@pytest.mark.parametrize("recipe", [
    TrainConfig(epochs=3, batch_size=32, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
                weight_decay=1e-2),
    TrainConfig(epochs=3, batch_size=32, optimizer="adam", lr=1e-2, weight_decay=1e-2),
])
def test_masked_weights_stay_exactly_zero(recipe):
    data = toy_data()
    model = toy_model()
    # Momentum/Adam state built up while dense, then a mask: stale state must not revive weights.
    train(model, data, TrainConfig(**{**recipe.__dict__, "epochs": 1}), seed=0, progress=False)
    mask = half_mask(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = train(model, data, recipe, seed=0, mask=mask, progress=False)
    params = dict(model.named_parameters())
    for name, m in mask.items():
        assert torch.all(params[name][~m] == 0.0), name
        assert not torch.equal(params[name][m], before[name][m]), "kept weights must train"
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"] * 1.5


RECIPES = {
    "sgd": TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.9,
                       nesterov=True, weight_decay=1e-3),
    "adam": TrainConfig(epochs=2, batch_size=16, optimizer="adam", lr=1e-2, weight_decay=1e-3),
}


@pytest.mark.parametrize("optimizer", list(RECIPES))
def test_training_is_deterministic_and_seed_dependent(optimizer):
    data = toy_data()
    a, b, c = toy_model(), toy_model(), toy_model()
    cfg = RECIPES[optimizer]
    sa = train(a, data, cfg, seed=3, progress=False)
    train(b, data, cfg, seed=3, progress=False)
    train(c, data, cfg, seed=4, progress=False)
    assert sa.optimizer.defaults["fused"]  # the implementation the loop chose
    for (n, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), n
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("optimizer", list(RECIPES))
@pytest.mark.parametrize("impl", ["foreach", "forloop"])
def test_fused_optimizer_steps_match_the_reference_implementations(optimizer, impl):
    """The fused kernels (the default) compute torch's reference updates (its per-parameter
    loop, its multi-tensor ops) with another rounding: over 24 steps the weights agree to
    compounded float32 rounding (largest difference measured: 6e-8), while a wrong update
    (here: no weight decay) differs by more than 1e-4."""
    data = toy_data()
    fused, reference = toy_model(), toy_model()
    state = train(fused, data, RECIPES[optimizer], seed=0, progress=False)
    assert state.optimizer.defaults["fused"]
    state = train(reference, data, replace(RECIPES[optimizer], optimizer_impl=impl), seed=0,
                  progress=False)
    assert not state.optimizer.defaults["fused"]
    assert state.optimizer.defaults["foreach"] == (impl == "foreach")
    for (name, a), b in zip(fused.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    no_decay = toy_model()
    train(no_decay, data, replace(RECIPES[optimizer], weight_decay=0.0), seed=0, progress=False)
    assert max((a - b).abs().max().item()
               for a, b in zip(no_decay.parameters(), reference.parameters())) > 1e-4


def test_make_optimizer_builds_the_recipes_optimizer_and_implementation():
    """The one optimiser builder: the recipe's hyperparameters (Nesterov only with momentum)
    and the implementation `optimizer_impl` names."""
    params = list(toy_model().parameters())
    sgd = make_optimizer(params, TrainConfig(optimizer="sgd", lr=0.3, momentum=0.8,
                                             nesterov=True, weight_decay=1e-4))
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["params"] == params
    assert {k: sgd.defaults[k] for k in ("lr", "momentum", "nesterov", "weight_decay")} == \
        {"lr": 0.3, "momentum": 0.8, "nesterov": True, "weight_decay": 1e-4}
    assert not make_optimizer(params, TrainConfig(optimizer="sgd", momentum=0.0,
                                                  nesterov=True)).defaults["nesterov"]
    for impl, (fused, foreach) in {"fused": (True, False), "foreach": (False, True),
                                   "forloop": (False, False)}.items():
        adam = make_optimizer(params, TrainConfig(optimizer="adam", lr=2e-3, weight_decay=0.1,
                                                  optimizer_impl=impl))
        assert type(adam) is torch.optim.Adam
        assert (adam.defaults["lr"], adam.defaults["weight_decay"]) == (2e-3, 0.1)
        assert (adam.defaults["fused"], adam.defaults["foreach"]) == (fused, foreach), impl


def test_resuming_keeps_the_recipes_implementation(tmp_path):
    """A checkpoint saved by another implementation (a run begun before the fused default)
    resumes with the one the recipe names."""
    data = toy_data()
    cfg = RECIPES["adam"]

    def crash_after_one(state):
        raise Crash

    with pytest.raises(Crash):
        train(toy_model(), data, replace(cfg, optimizer_impl="forloop"), seed=0,
              run_dir=tmp_path, progress=False, on_epoch_end=crash_after_one)
    state = train(toy_model(), data, cfg, seed=0, run_dir=tmp_path, progress=False)
    assert state.epoch == 2 and state.optimizer.param_groups[0]["fused"]


class Crash(Exception):
    pass


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    data = toy_data()
    cfg = TrainConfig(epochs=4, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.9,
                      weight_decay=1e-3)
    reference = toy_model()
    mask = half_mask(toy_model())
    train(reference, data, cfg, seed=1, mask=mask, progress=False)

    crashed = toy_model()

    def crash_after_two(state):
        if state.epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        train(crashed, data, cfg, seed=1, mask=mask, run_dir=tmp_path, progress=False,
              on_epoch_end=crash_after_two)
    resumed = toy_model(seed=99)  # fresh process: different in-memory weights
    state = train(resumed, data, cfg, seed=1, mask=mask, run_dir=tmp_path, progress=False)
    assert [h["epoch"] for h in state.history] == [1, 2, 3, 4]
    for (n, p), q in zip(reference.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n
    assert (tmp_path / "history.csv").read_text().count("\n") == 5


def test_save_iterations_and_replay_give_identical_weights(tmp_path):
    data = toy_data()
    cfg = TrainConfig(epochs=2, batch_size=16)  # 12 steps per epoch
    model = toy_model()
    train(model, data, cfg, seed=0, run_dir=tmp_path, save_iterations=(0, 5, 17), progress=False)
    replay = toy_model()
    train(replay, data, cfg, seed=0, stop_at_iteration=17, progress=False)
    saved = torch.load(tmp_path / "checkpoints" / "iter_17.pt", weights_only=True)
    for name, value in replay.state_dict().items():
        assert torch.equal(saved[name], value), name
    init = torch.load(tmp_path / "checkpoints" / "iter_0.pt", weights_only=True)
    assert all(torch.equal(init[k], v) for k, v in toy_model().state_dict().items())


def test_schedules():
    steps = 10
    cos = TrainConfig(epochs=10, lr=1.0, schedule="cosine", warmup_epochs=1)
    assert lr_factor(cos, 0, steps) == pytest.approx(0.1)
    assert lr_factor(cos, 9, steps) == pytest.approx(1.0)
    assert lr_factor(cos, 10, steps) == pytest.approx(1.0)
    assert lr_factor(cos, 55, steps) == pytest.approx(0.5)
    assert lr_factor(cos, 99, steps) < 0.01
    step = TrainConfig(epochs=10, schedule="step", milestones=(3, 6), gamma=0.1)
    assert [lr_factor(step, i * steps, steps) for i in (0, 2, 3, 5, 6, 9)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor(TrainConfig(schedule="constant"), 123, steps) == 1.0


def test_label_smoothing_changes_loss_not_argmax():
    data = toy_data()
    a, b = toy_model(), toy_model()
    sa = train(a, data, TrainConfig(epochs=1, batch_size=32), seed=0, progress=False)
    sb = train(b, data, TrainConfig(epochs=1, batch_size=32, label_smoothing=0.2), seed=0,
               progress=False)
    assert sa.history[0]["train_loss"] != sb.history[0]["train_loss"]


def test_evaluate_top1_top5_against_hand_count():
    torch.manual_seed(0)
    model = nn.Linear(4, 7)
    x, y = torch.randn(50, 4), torch.randint(0, 7, (50,))
    out = evaluate(model, x, y, batch_size=16)
    logits = model(x)
    top1 = sum(int(logits[i].argmax() == y[i]) for i in range(50)) / 50
    top5 = sum(int(y[i] in logits[i].topk(5).indices) for i in range(50)) / 50
    assert out["top1"] == pytest.approx(top1)
    assert out["top5"] == pytest.approx(top5)
    assert out["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert math.isnan(evaluate(model, x[:0], y[:0])["top1"])


def test_apply_mask_zeroes_exactly():
    model = toy_model()
    mask = half_mask(model)
    apply_mask(model, mask)
    w = dict(model.named_parameters())
    assert all(int((w[n] != 0).sum()) == int(m.sum()) for n, m in mask.items())


def test_start_iteration_continues_the_schedule_from_k_to_the_end(tmp_path):
    """Late rewinding (Frankle et al. 2020) trains from iteration k to the end: with no
    optimizer state to lose (plain SGD), weights saved at k and trained on from k end
    exactly where the uninterrupted run ends, mid-epoch k included."""
    data = toy_data()
    recipe = TrainConfig(epochs=3, batch_size=32, optimizer="sgd", momentum=0.0, lr=0.1,
                         schedule="cosine")
    k = 8  # 6 batches per epoch: k is inside the second epoch
    full = toy_model()
    state = train(full, data, recipe, seed=3, run_dir=tmp_path / "full", save_iterations=[k],
                  progress=False)
    resumed = toy_model()
    resumed.load_state_dict(torch.load(tmp_path / "full/checkpoints" / f"iter_{k}.pt",
                                       weights_only=True))
    later = train(resumed, data, recipe, seed=3, start_iteration=k, progress=False)
    assert later.iteration == state.iteration == 18
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # Starting over from k with a full schedule (the old behaviour) ends elsewhere.
    again = toy_model()
    again.load_state_dict(torch.load(tmp_path / "full/checkpoints" / f"iter_{k}.pt",
                                     weights_only=True))
    train(again, data, recipe, seed=3, progress=False)
    assert not torch.allclose(next(again.parameters()), next(full.parameters()))


@pytest.mark.parametrize("damage", ["truncate", "foreign"])
def test_a_damaged_last_checkpoint_falls_back_to_a_fresh_start(tmp_path, damage):
    data = toy_data()
    cfg = TrainConfig(epochs=3, batch_size=32)
    clean = toy_model()
    train(clean, data, cfg, seed=1, run_dir=tmp_path / "clean", progress=False)

    def crash_after_one(state):
        if state.epoch == 1:
            raise KeyboardInterrupt

    run_dir = tmp_path / "damaged"
    with pytest.raises(KeyboardInterrupt):
        train(toy_model(), data, cfg, seed=1, run_dir=run_dir, on_epoch_end=crash_after_one,
              progress=False)
    last = run_dir / "checkpoints/last.pt"
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[:100])
    else:
        torch.save({"model": {"nope": torch.zeros(1)}}, last)
    model = toy_model()
    state = train(model, data, cfg, seed=1, run_dir=run_dir, progress=False)
    assert state.epoch == 3 and (run_dir / "checkpoints/last.pt.damaged").exists()
    for a, b in zip(model.parameters(), clean.parameters()):
        assert torch.equal(a, b)
