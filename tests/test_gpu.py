"""The CUDA paths, run for real where a GPU is present (skipped elsewhere, CI included):
stacked training on the GPU, NVML energy and allocator memory in the benchmark record,
2:4 sparse weights on the sparse tensor cores, and the compiled (inductor, CUDA graphs),
bf16 and channels-last training steps (tests/test_compile.py checks them on the CPU)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from prunebench.config import TrainConfig
from prunebench.metrics import benchmark_model
from prunebench.models import get_model
from prunebench.pruning import METHODS, PruneContext, Scope
from prunebench.training import train
from prunebench.training.stacked import train_stacked
from test_compile import (
    EPOCH_SHAPES,
    RECIPE,
    assert_pruned_zero,
    assert_same_weights,
    eager_and_compiled,
    graphs,
)
from test_stacked import inits, magnitude_mask, toy_images

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


@pytest.mark.parametrize("name", ["lenet_300_100", "lenet5", "cnn_digits_bn"])
def test_stack_on_the_gpu_ends_where_separate_gpu_runs_end(name):
    """Three members on CUDA (one dense, two masked; seeds 0, 0, 1) in float64, trained as a
    stack and alone: same weights to rounding. A wrong data order or mask is off by far more
    (1e-3 and up, checked in test_stacked)."""
    shape = (1, 8, 8) if name == "cnn_digits_bn" else (1, 12, 12)
    data = toy_images(shape=shape, dtype=torch.float64).to(CUDA)
    recipe = TrainConfig(epochs=2, batch_size=32, optimizer="adam", lr=2e-3)
    models = [m.to(CUDA) for m in inits(name, 3, shape, torch.float64)]
    masks = [None] + [magnitude_mask(m, s) for m, s in zip(models[1:], (0.5, 0.9))]
    seeds = [0, 0, 1]
    alone = [copy.deepcopy(m) for m in models]
    for model, seed, mask in zip(alone, seeds, masks):
        train(model, data, recipe, seed=seed, mask=mask, progress=False)
    train_stacked(models, data, recipe, seeds=seeds, masks=masks, progress=False)
    for a, b in zip(alone, models):
        assert next(b.parameters()).device.type == CUDA.type
        for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(y, x, rtol=1e-7, atol=1e-9, msg=lambda m, k=key: f"{k}: {m}")
    for member, mask in zip(models[1:], masks[1:]):
        params = dict(member.named_parameters())
        assert all(torch.all(params[n][~m.to(CUDA)] == 0) for n, m in mask.items())


def test_benchmark_on_the_gpu_reads_nvml_energy_and_allocator_memory():
    pytest.importorskip("pynvml")
    torch.manual_seed(0)
    model = get_model("lenet_300_100", 10, (1, 28, 28))
    record = benchmark_model(model, (1, 28, 28), mask=None, device=CUDA,
                             batch_sizes=(1, 4096), min_time_s=0.3, modes=("dense",))
    assert record["energy_method"] == "nvml_total_energy", record["energy_unavailable_reason"]
    # A GPU board draws tens of watts idle: the energy of a timed pass is never zero.
    assert record["energy_mj_per_sample"] > 0
    assert record["memory_method"] == "cuda_allocator"
    weights_bytes = 4 * record["params_total"]
    assert record["memory_peak_bytes"] >= weights_bytes
    entry = record["latency"]["dense"]["4096"]
    assert entry["latency_median_ms"] > 0 and entry["reps"] >= 1
    assert record["environment"]["device_name"] == torch.cuda.get_device_name(CUDA)


def test_2_4_sparse_weights_run_on_the_sparse_tensor_cores():
    """An N:M (2:4) pruned MLP with layer sizes the semi-structured kernels accept: its
    Linear weights convert, and the fp16 sparse model computes what the fp16 dense one does."""
    if torch.cuda.get_device_capability(CUDA) < (8, 0):
        pytest.skip("semi-structured sparsity needs compute capability 8.0 or later")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(1024, 1024), nn.ReLU(),
                          nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 128))
    mask = METHODS.get("nm")(PruneContext(copy.deepcopy(model), Scope(),
                                          options={"n": 2, "m": 4}), 0.5)
    record = benchmark_model(model, (1, 32, 32), mask=mask, device=CUDA, batch_sizes=(256,),
                             min_time_s=0.2, modes=("dense", "dense_fp16", "semi_structured_2_4"))
    assert "semi_structured_2_4" not in record["modes_skipped"], record["modes_skipped"]
    assert record["sparse_layers_converted"]["semi_structured_2_4"] == 3
    diff = record["mode_output_max_abs_diff"]
    # Both fp16 modes differ from the fp32 dense output by fp16 rounding alone; a wrongly
    # laid-out sparse weight would be off by the size of the outputs themselves.
    assert diff["semi_structured_2_4"] <= 2 * diff["dense_fp16"] + 1e-3
    assert record["latency"]["semi_structured_2_4"]["256"]["latency_median_ms"] > 0


# Compiled and eager CUDA steps compared in float64 (as test_compile's INDUCTOR, for the same
# reason: training compounds rounding); inductor on the CPU ended these runs 4e-10 apart at
# most, a wrong mask, batch or a stale CUDA-graph input is off by 1e-3 and more.
GPU_COMPILED = {"rtol": 1e-6, "atol": 1e-8}


@pytest.fixture
def fresh_compiler():
    counters.clear()
    yield
    torch.compiler.reset()


@pytest.mark.parametrize("name, mode", [
    ("lenet_300_100", "reduce-overhead"),  # the step as CUDA graphs: what compile is for
    ("lenet_300_100", "default"),
    ("cnn_digits_bn", "reduce-overhead"),  # BatchNorm buffers updated inside the graphs
])
def test_compiled_step_on_the_gpu_ends_where_the_eager_step_ends(fresh_compiler, name, mode):
    shape = (1, 8, 8) if name == "cnn_digits_bn" else (1, 12, 12)
    recipe = replace(RECIPE, epochs=2, channels_last=name == "cnn_digits_bn")
    eager, compiled, mask, first, second, per_epoch = eager_and_compiled(
        name, recipe, torch.float64, mode=mode, device=CUDA, shape=shape)
    assert next(compiled.parameters()).device.type == "cuda"
    assert_same_weights(eager, compiled, GPU_COMPILED)
    for a, b in zip(first, second):
        torch.testing.assert_close(b["train_loss"], a["train_loss"], **GPU_COMPILED)
    assert_pruned_zero(compiled, mask)
    assert per_epoch == [EPOCH_SHAPES + 1] * recipe.epochs  # no recompiles after epoch 1


def test_compiled_stack_on_the_gpu_ends_where_the_eager_stack_ends(fresh_compiler):
    shape = (1, 8, 8)
    data = toy_images(shape=shape, dtype=torch.float64).to(CUDA)
    recipe = replace(RECIPE, epochs=2, optimizer="sgd", lr=0.05, nesterov=True)
    models = [m.to(CUDA) for m in inits("cnn_digits_bn", 3, shape, torch.float64)]
    masks = [None] + [magnitude_mask(m, s) for m, s in zip(models[1:], (0.5, 0.9))]
    eager = [copy.deepcopy(m) for m in models]
    train_stacked(eager, data, recipe, seeds=[0, 0, 1], masks=masks, progress=False)
    per_epoch = []
    train_stacked(models, data, replace(recipe, compile="reduce-overhead"), seeds=[0, 0, 1],
                  masks=masks, progress=False,
                  on_epoch_end=lambda states: per_epoch.append(graphs()))
    for a, b in zip(eager, models):
        assert_same_weights(a, b, GPU_COMPILED)
    for model, mask in zip(models[1:], masks[1:]):
        assert_pruned_zero(model, mask)
    assert per_epoch == [EPOCH_SHAPES + 1] * recipe.epochs


def test_bf16_and_channels_last_train_on_the_gpu(fresh_compiler):
    """bf16 autocast keeps float32 weights, learns, differs from fp32 and stays near it (on
    the CPU: epoch losses within 0.1 %), eager or compiled; channels-last lays the conv
    weights out NHWC and ends where the contiguous run ends, to rounding."""
    if torch.cuda.get_device_capability(CUDA) < (8, 0):
        pytest.skip("bf16 needs compute capability 8.0 or later")
    shape = (1, 8, 8)
    data = toy_images(shape=shape).to(CUDA)
    (model,) = inits("cnn_digits_bn", 1, shape)
    model.to(CUDA)
    mask = magnitude_mask(model, 0.6)
    recipe = replace(RECIPE, epochs=3)
    runs = {}
    for key, change in (("fp32", {}), ("bf16", {"precision": "bf16"}),
                        ("bf16_compiled", {"precision": "bf16", "compile": "reduce-overhead"})):
        runs[key] = copy.deepcopy(model)
        history = train(runs[key], data, replace(recipe, **change), seed=0, mask=mask,
                        progress=False).history
        runs[key + "_losses"] = [r["train_loss"] for r in history]
        assert all(p.dtype == torch.float32 for p in runs[key].parameters())
        assert_pruned_zero(runs[key], mask)
    for key in ("bf16", "bf16_compiled"):
        losses = runs[key + "_losses"]
        assert losses[-1] < losses[0]
        for a, b in zip(runs["fp32_losses"], losses):
            assert abs(a - b) < 0.05 * a, (key, runs["fp32_losses"], losses)
    gap = max((a - b).abs().max().item()
              for a, b in zip(runs["fp32"].parameters(), runs["bf16"].parameters()))
    assert gap > 1e-4  # bf16 did something

    # float32 without TF32: cuDNN runs float64 convolutions contiguous whatever the layout,
    # so only float32 exercises its channels-last kernels. They sum in another order than
    # the contiguous ones (on the CPU: 1.3e-6 apart after 2 epochs); a layout mix-up is off
    # by the size of the weights.
    plain, nhwc = copy.deepcopy(model), copy.deepcopy(model)
    recipe = replace(RECIPE, epochs=2, optimizer="sgd", lr=0.05)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        train(plain, data, recipe, seed=0, mask=mask, progress=False)
        train(nhwc, data, replace(recipe, channels_last=True), seed=0, mask=mask,
              progress=False)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert nhwc[3].weight.is_contiguous(memory_format=torch.channels_last)
    assert_same_weights(plain, nhwc, {"rtol": 1e-3, "atol": 1e-4})
    assert_pruned_zero(nhwc, mask)
