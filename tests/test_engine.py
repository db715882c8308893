"""One epoch loop for one model and for a stack: `train` and `train_stacked` both run
`training.loop.run_epochs`, over a `SingleEngine` or a `StackEngine`, so they record, write,
resume and fail the same way."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunebench.training.loop as loop
from prunebench.config import TrainConfig
from prunebench.data import DataSplits
from prunebench.pruning import METHODS, PruneContext, Scope
from prunebench.training import train
from prunebench.training.stacked import train_stacked

# A stack sums the products of a lone run in another order, so the two agree to rounding;
# in float64 that is below 1e-12 (see test_stacked.py).
FLOAT64 = {"rtol": 1e-9, "atol": 1e-12}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def toy_data(n=224, seed=0) -> DataSplits:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = (torch.randn(n, 1, 3, 4, generator=g) + 0.5 * y.view(-1, 1, 1, 1)).double()
    return DataSplits("toy", 4, (1, 3, 4), x[:160], y[:160], x[160:192], y[160:192], x[192:],
                      y[192:], None)


def toy_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)).double()


def half_mask(model: nn.Module) -> dict:
    return METHODS.get("global_magnitude")(PruneContext(copy.deepcopy(model), Scope()), 0.5)


RECIPE = TrainConfig(epochs=3, batch_size=32, optimizer="adam", lr=1e-2)  # 5 steps per epoch


class Crash(Exception):
    pass


def crash_at_epoch_one(state_or_states):
    states = state_or_states if isinstance(state_or_states, list) else [state_or_states]
    if states[0].epoch == 1:
        raise Crash


def test_one_model_and_a_stack_of_one_run_the_same_loop(tmp_path, monkeypatch):
    """Both go through `run_epochs` (which builds every epoch's records), and write the same
    history (same keys, same values to rounding), the same files and, at iteration 0, the
    same masked weights bit for bit."""
    engines = []
    real_records = loop._epoch_records
    monkeypatch.setattr(loop, "_epoch_records", lambda engine, *a: (
        engines.append(type(engine).__name__), real_records(engine, *a))[1])
    data = toy_data()
    init = toy_model(1)
    mask = half_mask(init)
    alone, stacked = copy.deepcopy(init), copy.deepcopy(init)
    state = train(alone, data, RECIPE, seed=5, mask=mask, run_dir=tmp_path / "alone",
                  save_iterations=[0, 7], progress=False)
    (member,) = train_stacked([stacked], data, RECIPE, seeds=[5], masks=[mask],
                              run_dirs=[tmp_path / "stack"], save_iterations=[0, 7],
                              progress=False)
    assert engines == ["SingleEngine"] * 3 + ["StackEngine"] * 3

    assert [list(r) for r in state.history] == [list(r) for r in member.history]
    assert list(state.history[0]) == ["epoch", "iteration", "lr", "train_loss", "train_top1",
                                      "val_loss", "val_top1", "val_top5", "epoch_time_s",
                                      "weight_sparsity"]
    for a, b in zip(state.history, member.history):
        for key in ("epoch", "iteration", "lr", "train_top1", "val_top1", "weight_sparsity"):
            assert a[key] == b[key], key
        torch.testing.assert_close(b["train_loss"], a["train_loss"], rtol=1e-9, atol=0.0)
    for a, b in zip(alone.parameters(), stacked.parameters()):
        torch.testing.assert_close(b, a, **FLOAT64)
    assert (member.epoch, member.iteration) == (state.epoch, state.iteration) == (3, 15)

    files = {d: sorted(str(p.relative_to(tmp_path / d)) for p in (tmp_path / d).rglob("*"))
             for d in ("alone", "stack")}
    assert files["alone"] == files["stack"]
    assert "checkpoints/iter_7.pt" in files["alone"]
    header = {d: (tmp_path / d / "history.csv").read_text().splitlines()[0] for d in files}
    assert header["alone"] == header["stack"]
    first = {d: torch.load(tmp_path / d / "checkpoints/iter_0.pt", weights_only=True)
             for d in files}
    for name, weights in first["alone"].items():
        assert torch.equal(first["stack"][name], weights), name
    last = {d: torch.load(tmp_path / d / "checkpoints/last.pt", weights_only=True) for d in files}
    assert last["alone"].keys() == last["stack"].keys()
    assert torch.equal(last["alone"]["torch_rng"], last["stack"]["torch_rng"])


def test_single_runs_checkpoints_resume_as_one_stack(tmp_path):
    """Two runs crash after epoch 1 on their own; one stack resumes both from their
    `last.pt` and ends where the uninterrupted runs end."""
    data = toy_data()
    inits = [toy_model(10 + i) for i in range(2)]
    masks = [half_mask(inits[0]), None]
    whole = [copy.deepcopy(m) for m in inits]
    for model, seed, mask in zip(whole, (0, 1), masks):
        train(model, data, RECIPE, seed=seed, mask=mask, progress=False)
    dirs = [tmp_path / "a", tmp_path / "b"]
    for init, seed, mask, run_dir in zip(inits, (0, 1), masks, dirs):
        with pytest.raises(Crash):
            train(copy.deepcopy(init), data, RECIPE, seed=seed, mask=mask, run_dir=run_dir,
                  progress=False, on_epoch_end=crash_at_epoch_one)
    resumed = [toy_model(99), toy_model(98)]  # any weights: the checkpoints replace them
    states = train_stacked(resumed, data, RECIPE, seeds=[0, 1], masks=masks, run_dirs=dirs,
                           progress=False)
    for state, ours, theirs in zip(states, resumed, whole):
        assert [h["epoch"] for h in state.history] == [1, 2, 3]
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, **FLOAT64)
    assert (dirs[0] / "history.csv").read_text().count("\n") == 4


@pytest.mark.parametrize("kind", ["single", "stack"])
def test_a_checkpoint_that_does_not_restore_is_set_aside_by_either_engine(tmp_path, kind):
    """A `last.pt` that reads as one but whose optimiser state does not load: the weights
    are rolled back, the file set aside as `last.pt.damaged`, and the run starts afresh and
    ends where an uninterrupted run ends, bit for bit."""
    data = toy_data()
    inits = [toy_model(20), toy_model(21)] if kind == "stack" else [toy_model(20)]
    seeds = list(range(len(inits)))
    dirs = [tmp_path / f"m{i}" for i in seeds]

    def run(models, run_dirs=None, **kw):
        if kind == "single":
            return [train(models[0], data, RECIPE, seed=0, progress=False,
                          run_dir=None if run_dirs is None else run_dirs[0], **kw)]
        return train_stacked(models, data, RECIPE, seeds=seeds, run_dirs=run_dirs,
                             progress=False, **kw)

    clean = [copy.deepcopy(m) for m in inits]
    run(clean)
    with pytest.raises(Crash):
        run([copy.deepcopy(m) for m in inits], dirs, on_epoch_end=crash_at_epoch_one)
    last = dirs[-1] / "checkpoints/last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["optimizer"] = {"state": {}, "param_groups": []}  # a foreign optimiser state
    torch.save(ckpt, last)
    models = [copy.deepcopy(m) for m in inits]
    states = run(models, dirs)
    assert (dirs[-1] / "checkpoints/last.pt.damaged").exists()
    assert [h["epoch"] for h in states[0].history] == [1, 2, 3]
    for ours, theirs in zip(models, clean):
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(a, b)


def test_divergence_names_the_member_that_diverged():
    data = toy_data()
    broken = toy_model(30)
    with torch.no_grad():
        broken[1].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"^training diverged at epoch 1 \(loss nan\)"):
        train(copy.deepcopy(broken), data, RECIPE, seed=0, progress=False)
    with pytest.raises(FloatingPointError,
                       match=r"^stack member 1 \(seed 4\) diverged at epoch 1 \(loss nan\)"):
        train_stacked([toy_model(31), copy.deepcopy(broken)], data, RECIPE, seeds=[3, 4],
                      progress=False)
