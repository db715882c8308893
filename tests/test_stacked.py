"""Stacked training: K models trained as one end where K separate `train` runs end."""

from __future__ import annotations

import copy
import shutil
from dataclasses import replace

import pytest
import torch
from torch import nn

from prunebench.config import TrainConfig
from prunebench.data import DataSplits
from prunebench.models import get_model
from prunebench.pruning import METHODS, PruneContext, Scope
from prunebench.training import train
from prunebench.training.stacked import (
    NotStackable,
    can_stack,
    stack_refusal,
    stack_size,
    train_stacked,
)

# The stack sums the same products as a lone run in another order (one bmm or grouped
# convolution instead of K matmuls or convolutions), so its ops differ from the lone run's by
# rounding, and training compounds that: a ReLU or max-pool input sitting within rounding of
# its kink, or an Adam update of a weight whose gradient is rounding noise, turns 1 ulp into
# a visible difference. A lone run shows the same sensitivity to a 1e-7 change of its initial
# weights. So the recipes are checked in float64, where rounding is 1e-16: the largest
# difference measured over these runs was 5e-15, and atol 1e-12 still fails at the 1e-3 or
# more that a wrong batch order, mask or BatchNorm statistic causes (checked below). A
# float32 check of gentle recipes uses 1e-5 (largest measured: 2e-7).
FLOAT64 = {"rtol": 1e-9, "atol": 1e-12}
FLOAT32 = {"rtol": 1e-4, "atol": 1e-5}

SHAPE = (1, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def toy_images(n=288, shape=SHAPE, seed=0, dtype=torch.float32) -> DataSplits:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (torch.randn(n, *shape, generator=g) + 0.3 * y.view(-1, 1, 1, 1)).to(dtype)
    return DataSplits("toy", 10, shape, x[:224], y[:224], x[224:256], y[224:256], x[256:],
                      y[256:], None)


def inits(name: str, count: int, shape=SHAPE, dtype=torch.float32) -> list[nn.Module]:
    models = []
    for i in range(count):
        torch.manual_seed(100 + i)
        models.append(get_model(name, 10, shape).to(dtype))
    return models


def magnitude_mask(model: nn.Module, sparsity: float) -> dict:
    return METHODS.get("global_magnitude")(PruneContext(copy.deepcopy(model), Scope()), sparsity)


def assert_same_run(alone: nn.Module, stacked: nn.Module, alone_history, stacked_history,
                    tolerance: dict) -> None:
    """Same weights and buffers, and the same per-epoch records but for the epoch time."""
    for (name, a), b in zip(alone.state_dict().items(), stacked.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, **tolerance, msg=lambda m, n=name: f"{n}: {m}")
        else:
            assert torch.equal(a, b), name  # BatchNorm's num_batches_tracked
    assert len(alone_history) == len(stacked_history)
    for ra, rs in zip(alone_history, stacked_history):
        assert ra.keys() == rs.keys()
        for key in ("epoch", "iteration", "lr", "weight_sparsity", "train_top1", "val_top1",
                    "val_top5"):
            assert ra.get(key) == rs.get(key), key
        for key in ("train_loss", "val_loss"):
            torch.testing.assert_close(rs[key], ra[key], rtol=tolerance["rtol"], atol=0.0)


CASES = {
    "mlp_adam_cosine_warmup": ("mlp_digits", TrainConfig(
        epochs=2, batch_size=32, optimizer="adam", lr=1e-2, weight_decay=1e-3,
        warmup_epochs=0.5)),
    "cnn_sgd_nesterov_step": ("cnn_digits", TrainConfig(
        epochs=2, batch_size=32, optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True,
        weight_decay=1e-3, schedule="step", milestones=(1,), label_smoothing=0.1)),
    "cnn_batchnorm_sgd_slimming": ("cnn_digits_bn", TrainConfig(
        epochs=2, batch_size=32, optimizer="sgd", lr=0.05, momentum=0.9, bn_l1=1e-3,
        schedule="constant")),
}


def run_both(name, recipe, seeds, sparsities, shape=SHAPE, dtype=torch.float32):
    """Train `name` with each seed and mask alone and as one stack: (alone models, their
    histories, stacked models, stacked states, masks)."""
    data = toy_images(shape=shape, dtype=dtype)
    models = inits(name, len(seeds), shape, dtype)
    masks = [magnitude_mask(m, s) if s else None for m, s in zip(models, sparsities)]
    alone = [copy.deepcopy(m) for m in models]
    histories = [train(m, data, recipe, seed=s, mask=mk, progress=False).history
                 for m, s, mk in zip(alone, seeds, masks)]
    states = train_stacked(models, data, recipe, seeds=seeds, masks=masks, progress=False)
    return alone, histories, models, states, masks


@pytest.mark.parametrize("case", list(CASES))
def test_stack_computes_what_separate_runs_compute(case):
    """Three members, in float64: one dense, two masked; two share seed 0 (one data stream,
    the shared input batch) and one has its own (its own batch order)."""
    name, recipe = CASES[case]
    alone, histories, models, states, masks = run_both(name, recipe, [0, 0, 1], [0, 0.5, 0.8],
                                                      dtype=torch.float64)
    for a, m, h, state in zip(alone, models, histories, states):
        assert state.model is m and state.epoch == recipe.epochs
        assert_same_run(a, m, h, state.history, FLOAT64)
    for member, mask in zip(models[1:], masks[1:]):
        params = dict(member.named_parameters())
        assert all(torch.all(params[n][~m] == 0) for n, m in mask.items())
    # What a wrong batch order does is far outside the tolerance.
    other = copy.deepcopy(alone[1])
    train(other, toy_images(dtype=torch.float64), recipe, seed=1, progress=False)
    gap = max((a - b).abs().max().item() for a, b in zip(other.parameters(), alone[1].parameters()))
    assert gap > 1e-3


@pytest.mark.parametrize("seeds", [[3, 3, 3], [0, 1, 2]], ids=["one_stream", "own_streams"])
def test_lenet5_stack_with_shared_or_separate_data_streams(seeds):
    """LeNet-5's first convolution reads a shared batch as K*6 filters at once; with
    separate streams it becomes a grouped convolution."""
    recipe = TrainConfig(epochs=2, batch_size=32, optimizer="adam", lr=2e-3)
    alone, histories, models, states, _ = run_both("lenet5", recipe, seeds, [0, 0.5, 0.9],
                                                   shape=(1, 12, 12), dtype=torch.float64)
    for a, m, h, state in zip(alone, models, histories, states):
        assert_same_run(a, m, h, state.history, FLOAT64)


def odd_layers() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8, momentum=None),
        nn.Tanh(), nn.Linear(8, 10))


@pytest.mark.parametrize("seeds", [[5, 5], [5, 6]], ids=["one_stream", "own_streams"])
def test_strided_grouped_pooled_and_batchnorm1d_layers_stack(seeds):
    data = toy_images(dtype=torch.float64)
    recipe = TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.05, momentum=0.9)
    models = []
    for i in range(2):
        torch.manual_seed(i)
        models.append(odd_layers().double())
    assert can_stack(models, recipe)
    alone = [copy.deepcopy(m) for m in models]
    histories = [train(m, data, recipe, seed=s, progress=False).history
                 for m, s in zip(alone, seeds)]
    states = train_stacked(models, data, recipe, seeds=seeds, progress=False)
    for a, m, h, state in zip(alone, models, histories, states):
        assert_same_run(a, m, h, state.history, FLOAT64)


@pytest.mark.parametrize("name", ["mlp_digits", "lenet5"])
def test_float32_stack_matches_separate_runs(name):
    recipe = TrainConfig(epochs=2, batch_size=32, optimizer="adam", lr=1e-3)
    shape = (1, 12, 12) if name == "lenet5" else SHAPE
    alone, histories, models, states, _ = run_both(name, recipe, [0, 0, 1], [0, 0.8, 0],
                                                   shape=shape)
    for a, m, h, state in zip(alone, models, histories, states):
        assert_same_run(a, m, h, state.history, FLOAT32)


class Crash(Exception):
    pass


def test_stack_writes_run_directories_that_either_loop_resumes(tmp_path):
    """Each member's run directory holds what `train` writes (history.csv,
    checkpoints/last.pt, iter_<k>.pt); a crashed stack resumes to the uninterrupted stack's
    weights bit for bit, and `train` resumes one member's directory alone."""
    data = toy_images()
    recipe = TrainConfig(epochs=3, batch_size=32, optimizer="adam", lr=1e-2)  # 7 steps/epoch
    seeds = [0, 1]
    models = inits("mlp_digits", 2)
    masks = [magnitude_mask(models[0], 0.5), None]
    init = [copy.deepcopy(m) for m in models]
    whole = [copy.deepcopy(m) for m in init]
    train_stacked(whole, data, recipe, seeds=seeds, masks=masks, progress=False,
                  run_dirs=[tmp_path / "whole0", tmp_path / "whole1"], save_iterations=[0, 9])

    alone_dir = tmp_path / "alone"
    alone = copy.deepcopy(init[0])
    train(alone, data, recipe, seed=0, mask=masks[0], run_dir=alone_dir,
          save_iterations=[0, 9], progress=False)
    made = tmp_path / "whole0"
    assert sorted(p.name for p in made.rglob("*")) == sorted(p.name for p in alone_dir.rglob("*"))
    assert (made / "history.csv").read_text().splitlines()[0] == \
        (alone_dir / "history.csv").read_text().splitlines()[0]
    for name in ("last.pt", "iter_0.pt", "iter_9.pt"):
        ours = torch.load(made / "checkpoints" / name, weights_only=True)
        theirs = torch.load(alone_dir / "checkpoints" / name, weights_only=True)
        assert ours.keys() == theirs.keys()
    rng = [torch.load(d / "checkpoints/last.pt", weights_only=True)["torch_rng"]
           for d in (made, alone_dir)]
    assert torch.equal(*rng)

    def crash_after_two(states):
        if states[0].epoch == 2:
            raise Crash

    dirs = [tmp_path / "crashed0", tmp_path / "crashed1"]
    with pytest.raises(Crash):
        train_stacked([copy.deepcopy(m) for m in init], data, recipe, seeds=seeds, masks=masks,
                      run_dirs=dirs, progress=False, on_epoch_end=crash_after_two)
    alone_dir = shutil.copytree(dirs[1], tmp_path / "member1_alone")
    member_alone = inits("mlp_digits", 1)[0]  # any weights: the checkpoint replaces them
    state = train(member_alone, data, recipe, seed=1, run_dir=alone_dir, progress=False)
    assert [h["epoch"] for h in state.history] == [1, 2, 3]
    for a, b in zip(member_alone.parameters(), whole[1].parameters()):
        torch.testing.assert_close(a, b, **FLOAT32)

    resumed = [copy.deepcopy(m) for m in inits("mlp_digits", 2)]  # a fresh process
    states = train_stacked(resumed, data, recipe, seeds=seeds, masks=masks, run_dirs=dirs,
                           progress=False)
    assert [h["epoch"] for h in states[0].history] == [1, 2, 3]
    for ours, theirs in zip(resumed, whole):
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(a, b)
    assert (dirs[0] / "history.csv").read_text().count("\n") == 4


@pytest.mark.parametrize("damage", ["one_missing", "truncated"])
def test_unusable_checkpoints_restart_the_stack(tmp_path, damage):
    """Checkpoints that are not all there at one epoch, or a damaged one (set aside as
    last.pt.damaged, as `train` does), restart the stack, which ends where it would have."""
    data = toy_images()
    recipe = TrainConfig(epochs=2, batch_size=64, optimizer="sgd", lr=0.05)
    init = inits("mlp_digits", 2)
    reference = [copy.deepcopy(m) for m in init]
    train_stacked(reference, data, recipe, seeds=[0, 1], progress=False)
    dirs = [tmp_path / "a", tmp_path / "b"]
    one_epoch = replace(recipe, epochs=1)
    train(copy.deepcopy(init[0]), data, one_epoch, seed=0, run_dir=dirs[0], progress=False)
    if damage == "truncated":
        train(copy.deepcopy(init[1]), data, one_epoch, seed=1, run_dir=dirs[1], progress=False)
        last = dirs[1] / "checkpoints/last.pt"
        last.write_bytes(last.read_bytes()[:100])
    models = [copy.deepcopy(m) for m in init]
    states = train_stacked(models, data, recipe, seeds=[0, 1], run_dirs=dirs, progress=False)
    assert [h["epoch"] for h in states[0].history] == [1, 2]
    assert (dirs[1] / "checkpoints/last.pt.damaged").exists() == (damage == "truncated")
    for ours, theirs in zip(models, reference):
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(a, b)


def test_what_stacks_and_what_is_refused_with_a_reason():
    for name, shape in [("lenet_300_100", (1, 28, 28)), ("lenet5", (1, 28, 28)),
                        ("mlp_digits", SHAPE), ("cnn_digits", SHAPE), ("cnn_digits_bn", SHAPE),
                        ("vgg11_bn", (3, 8, 8))]:
        assert can_stack(inits(name, 2, shape)), name
    assert "nn.Sequential" in stack_refusal(inits("resnet20", 2, (3, 8, 8)))
    dropout = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Dropout(0.5))
    assert "Dropout" in stack_refusal([dropout, copy.deepcopy(dropout)])
    pruned = nn.Sequential(nn.Flatten(), nn.Linear(64, 9), nn.ReLU(), nn.Linear(9, 10))
    mixed = [nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)), pruned]
    assert "differs" in stack_refusal(mixed)
    assert not can_stack(mixed)
    frozen = copy.deepcopy(pruned)
    frozen[1].bias.requires_grad_(False)
    assert "frozen" in stack_refusal([frozen, copy.deepcopy(frozen)])
    hooked = copy.deepcopy(pruned)
    hooked[1].register_forward_pre_hook(lambda module, args: None)
    assert "hooks" in stack_refusal([hooked, hooked])

    class Scaled(nn.Linear):  # a subclass may compute something else
        def forward(self, x):
            return 2 * super().forward(x)

    subclass = nn.Sequential(nn.Flatten(), Scaled(64, 10))
    assert "Scaled" in stack_refusal([subclass, copy.deepcopy(subclass)])
    with pytest.raises(NotStackable, match="differs"):
        train_stacked(mixed, toy_images(), TrainConfig(epochs=1), seeds=[0, 0])
    with pytest.raises(ValueError, match="2 models but 1 seeds"):
        train_stacked(inits("mlp_digits", 2), toy_images(), TrainConfig(epochs=1), seeds=[0])


def test_stack_size_fits_the_budget():
    model = get_model("lenet_300_100", 10, (1, 28, 28))
    adam = TrainConfig(optimizer="adam")
    per_member = 10**9 // stack_size(model, 64, 10**9, input_shape=(1, 28, 28), recipe=adam)
    # Weights, gradients, mask, the member module and two Adam moments: > 6x the weights.
    assert per_member >= 6 * 4 * 266_610
    assert stack_size(model, 64, 1, input_shape=(1, 28, 28)) == 1
    sizes = [stack_size(model, 64, b, input_shape=(1, 28, 28), recipe=adam)
             for b in (10**8, 2 * 10**8, 4 * 10**8)]
    assert sizes == sorted(sizes) and sizes[2] >= 3 * sizes[0]
    plain_sgd = TrainConfig(optimizer="sgd", momentum=0.0)
    assert stack_size(model, 64, 10**9, input_shape=(1, 28, 28), recipe=plain_sgd) > \
        stack_size(model, 64, 10**9, input_shape=(1, 28, 28), recipe=adam)
    assert stack_size(model, 512, 10**9, input_shape=(1, 28, 28), recipe=adam) < \
        stack_size(model, 16, 10**9, input_shape=(1, 28, 28), recipe=adam)
