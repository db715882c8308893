"""How a step executes (`prunebench.training.execution`): a compiled step ends where the
eager step ends, compiles a bounded number of graphs, and keeps pruned weights at zero;
bf16 autocast trains with float32 weights; channels-last changes the layout, not the values;
all three are part of a run's name only when not their default.

On this CPU the compiled tests run dynamo's capture and AOT autograd with the `aot_eager`
backend: inductor works here, but its first compile of a small model's step takes about a
minute on 2 cores, far over the test budget. `aot_eager` still captures the same graphs,
graph breaks and recompiles (what these tests check); it runs the captured aten ops as
eager does, so compiled and eager agree to the bit here (measured). Set
PRUNEBENCH_TEST_INDUCTOR=1 to run the equivalence with the real inductor as well (float64,
see INDUCTOR), and tests/test_gpu.py runs the CUDA modes on a GPU.
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace

import pytest
import torch
from torch._dynamo.utils import counters

from prunebench.config import TrainConfig, canonical, config_hash, from_dict
from prunebench.errors import ConfigError
from prunebench.training import execution, train
from prunebench.training.stacked import train_stacked
from test_stacked import SHAPE, inits, magnitude_mask, toy_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# aot_eager runs the captured aten ops one by one, as eager does, so the runs agree to the
# bit (measured: difference 0.0 over every case here); the tolerance only leaves room for
# a future torch reordering a reduction in AOT autograd's backward. A wrong mask, batch or
# BatchNorm statistic is off by 1e-3 and more (tests/test_stacked.py).
AOT_EAGER = {"rtol": 1e-5, "atol": 1e-6}
# Inductor fuses and reorders float sums, and training compounds rounding (a ReLU input
# within rounding of 0 flips), so its equivalence is checked in float64, where rounding
# is 1e-16. Measured with inductor on this CPU after 2 epochs: 6e-17 (MLP) and 4e-10
# (cnn_digits_bn; in float32 the same run ends 1e-2 apart). The tolerance sits far below
# a real error (1e-3 and up) and above the compounded float64 rounding.
INDUCTOR = {"rtol": 1e-7, "atol": 1e-9}
RECIPE = TrainConfig(epochs=3, batch_size=48, optimizer="adam", lr=2e-3)
# 224 training samples in batches of 48: four full batches and one of 32, so two shapes.
EPOCH_SHAPES = 2


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(execution, "BACKEND", "aot_eager")
    counters.clear()
    yield
    torch.compiler.reset()


def graphs() -> int:
    """Graphs dynamo has compiled since `counters.clear()` (every recompile is one more)."""
    return counters["stats"]["unique_graphs"]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, tolerance: dict) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        if x.is_floating_point():
            torch.testing.assert_close(y, x, **tolerance, msg=lambda m, n=name: f"{n}: {m}")
        else:
            assert torch.equal(x, y), name  # BatchNorm's num_batches_tracked


def assert_pruned_zero(model: torch.nn.Module, mask: dict) -> None:
    params = dict(model.named_parameters())
    for name, m in mask.items():
        assert torch.all(params[name][~m] == 0), name


def eager_and_compiled(name: str, recipe: TrainConfig, dtype=torch.float32, *,
                       mode: str = "default", device: str | torch.device = "cpu",
                       shape=SHAPE):
    """One masked model trained eagerly and compiled with `mode`; the compiled run's graph
    count after each epoch."""
    data = toy_images(shape=shape, dtype=dtype).to(device)
    (model,) = inits(name, 1, shape, dtype)
    model.to(device)
    mask = magnitude_mask(model, 0.6)
    eager, compiled = copy.deepcopy(model), copy.deepcopy(model)
    first = train(eager, data, recipe, seed=0, mask=mask, progress=False).history
    counters.clear()
    per_epoch = []
    second = train(compiled, data, replace(recipe, compile=mode), seed=0, mask=mask,
                   progress=False, on_epoch_end=lambda state: per_epoch.append(graphs())).history
    return eager, compiled, mask, first, second, per_epoch


@pytest.mark.parametrize("name, recipe", [
    ("mlp_digits", RECIPE),
    # A conv net with BatchNorm (running statistics updated inside the captured forward),
    # channels-last and SGD with Nesterov momentum.
    ("cnn_digits_bn", replace(RECIPE, epochs=2, optimizer="sgd", lr=0.05, nesterov=True,
                              channels_last=True)),
])
def test_compiled_step_ends_where_the_eager_step_ends(aot_eager, name, recipe):
    eager, compiled, mask, first, second, per_epoch = eager_and_compiled(name, recipe)
    assert_same_weights(eager, compiled, AOT_EAGER)
    for a, b in zip(first, second):
        torch.testing.assert_close(b["train_loss"], a["train_loss"], **AOT_EAGER)
    assert_pruned_zero(compiled, mask)
    # Compiled once per batch shape (forward, with its backward) plus the mask function,
    # all in the first epoch; later epochs reuse them (a recompile each epoch, or each
    # learning-rate change, would grow the count).
    assert per_epoch == [EPOCH_SHAPES + 1] * recipe.epochs
    assert counters["stats"]["calls_captured"] > 0  # it did compile


def test_a_new_model_compiles_afresh_instead_of_piling_up_recompiles(aot_eager):
    """torch caches compiled code per function across models and runs it eagerly after 8
    recompiles; each compiled engine starts from a clean cache, so a second model (and so
    the tenth) in one process compiles what the first did, not that plus its own."""
    data = toy_images()
    recipe = replace(RECIPE, epochs=1, compile="default")
    counts = []
    for width in (16, 24):
        torch.manual_seed(width)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width),
                                    torch.nn.ReLU(), torch.nn.Linear(width, 10))
        counters.clear()
        train(model, data, recipe, seed=0, progress=False)
        counts.append(graphs())
    assert counts[0] == counts[1] == EPOCH_SHAPES  # no mask: no mask function


def test_compiled_stack_ends_where_the_eager_stack_ends(aot_eager):
    """A stack of three (two masked; seeds 0, 0, 1: a shared and an own data stream)."""
    data = toy_images()
    recipe = replace(RECIPE, epochs=2)
    models = inits("mlp_digits", 3)
    masks = [None, magnitude_mask(models[1], 0.5), magnitude_mask(models[2], 0.9)]
    eager = [copy.deepcopy(m) for m in models]
    train_stacked(eager, data, recipe, seeds=[0, 0, 1], masks=masks, progress=False)
    per_epoch = []
    train_stacked(models, data, replace(recipe, compile="reduce-overhead"), seeds=[0, 0, 1],
                  masks=masks, progress=False, on_epoch_end=lambda states: per_epoch.append(
                      graphs()))
    for a, b in zip(eager, models):
        assert_same_weights(a, b, AOT_EAGER)
    for model, mask in zip(models[1:], masks[1:]):
        assert_pruned_zero(model, mask)
    assert per_epoch == [EPOCH_SHAPES + 1] * recipe.epochs


@pytest.mark.skipif(not os.environ.get("PRUNEBENCH_TEST_INDUCTOR"),
                    reason="inductor's first CPU compile takes minutes; "
                           "set PRUNEBENCH_TEST_INDUCTOR=1")
@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits_bn"])
def test_inductor_step_ends_where_the_eager_step_ends(name):
    recipe = replace(RECIPE, epochs=2, channels_last=name == "cnn_digits_bn")
    eager, compiled, mask, _, _, per_epoch = eager_and_compiled(name, recipe, torch.float64)
    assert_same_weights(eager, compiled, INDUCTOR)
    assert_pruned_zero(compiled, mask)
    assert per_epoch == [EPOCH_SHAPES + 1] * recipe.epochs
    torch.compiler.reset()


def test_bf16_autocast_trains_with_float32_weights():
    """bf16 rounds every matrix product's inputs to 8 bits of mantissa: the run must differ
    from fp32's (it did something), stay near it (measured: largest weight difference 2e-2
    after 3 epochs, of weights up to 1; epoch losses within 0.1 %), learn, keep float32
    weights and optimiser state, and keep pruned weights at zero."""
    data = toy_images()
    (model,) = inits("cnn_digits_bn", 1)
    mask = magnitude_mask(model, 0.6)
    fp32, bf16 = copy.deepcopy(model), copy.deepcopy(model)
    recipe = replace(RECIPE, epochs=3)
    ref = train(fp32, data, recipe, seed=0, mask=mask, progress=False)
    state = train(bf16, data, replace(recipe, precision="bf16"), seed=0, mask=mask,
                  progress=False)
    losses = [r["train_loss"] for r in state.history]
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert all(v.dtype == torch.float32 for s in state.optimizer.state.values()
               for k, v in s.items() if k != "step")
    gap = max((a - b).abs().max().item() for a, b in zip(fp32.parameters(), bf16.parameters()))
    assert 1e-4 < gap < 0.1
    for a, b in zip(ref.history, state.history):
        assert abs(a["train_loss"] - b["train_loss"]) < 0.05 * a["train_loss"]
    assert_pruned_zero(bf16, mask)


def test_bf16_stack_trains_under_autocast():
    data = toy_images()
    recipe = replace(RECIPE, epochs=2)
    models = inits("mlp_digits", 2)
    fp32 = [copy.deepcopy(m) for m in models]
    train_stacked(fp32, data, recipe, seeds=[0, 1], progress=False)
    states = train_stacked(models, data, replace(recipe, precision="bf16"), seeds=[0, 1],
                           progress=False)
    for a, b, state in zip(fp32, models, states):
        assert all(p.dtype == torch.float32 for p in b.parameters())
        gap = max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))
        assert 1e-4 < gap < 0.1
        assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]


def test_channels_last_changes_the_layout_not_the_values():
    """Same weights as the contiguous run but for the conv kernels' rounding: float32 sums in
    another order, compounded over two epochs (measured: 1.3e-6 at most)."""
    data = toy_images()
    (model,) = inits("cnn_digits_bn", 1)
    mask = magnitude_mask(model, 0.6)
    plain, nhwc = copy.deepcopy(model), copy.deepcopy(model)
    recipe = replace(RECIPE, epochs=2, optimizer="sgd", lr=0.05)
    train(plain, data, recipe, seed=0, mask=mask, progress=False)
    train(nhwc, data, replace(recipe, channels_last=True), seed=0, mask=mask, progress=False)
    conv = 3  # the second convolution (the first, of one input channel, is both layouts)
    assert nhwc[conv].weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain[conv].weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_weights(plain, nhwc, {"rtol": 1e-4, "atol": 1e-5})
    assert_pruned_zero(nhwc, mask)


def test_the_options_name_runs_only_when_not_their_default():
    """The defaults leave every existing name as it was (tests/test_cli.py and
    tests/test_plan_identity.py pin them); any other value names another run."""
    base = TrainConfig(epochs=3)
    assert config_hash({"train": base}) == "5c46aa91d8974fdc"  # as pinned in test_cli.py
    explicit = replace(base, compile="off", precision="fp32", channels_last=False)
    assert config_hash({"train": explicit}) == config_hash({"train": base})
    assert not {"compile", "precision", "channels_last"} & set(canonical(explicit))
    names = {config_hash({"train": replace(base, **change)}) for change in (
        {"compile": "default"}, {"compile": "reduce-overhead"},
        {"compile": "max-autotune-no-cudagraphs"}, {"compile": "max-autotune"},
        {"precision": "bf16"}, {"channels_last": True})}
    assert len(names) == 6 and config_hash({"train": base}) not in names
    assert canonical(replace(base, precision="bf16"))["precision"] == "bf16"
    for key, bad in (("compile", "fast"), ("precision", "fp16"), ("channels_last", "yes")):
        with pytest.raises(ConfigError, match=f"train.{key}"):
            from_dict(TrainConfig, {key: bad}, "train")
