"""The CUDA paths, run for real where a GPU is present (skipped elsewhere, CI included):
stacked training on the GPU, NVML energy and allocator memory in the benchmark record, and
2:4 sparse weights on the sparse tensor cores."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunebench.config import TrainConfig
from prunebench.metrics import benchmark_model
from prunebench.models import get_model
from prunebench.pruning import METHODS, PruneContext, Scope
from prunebench.training import train
from prunebench.training.stacked import train_stacked
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
