"""Measurement library: MACs, effective sparsity, sparse encoding, sparse execution, latency,
energy and the benchmark record."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch import nn

from prunebench.metrics import (
    benchmark_model,
    count_macs,
    decode_sparse,
    effective_counts,
    effective_weight_masks,
    encode_sparse,
    mac_counts,
    macs_thop,
    size_counts,
    sparsity_counts,
    to_sparse_csr,
)
from prunebench.export import onnx_unavailable_reason
from prunebench.metrics.encoding import MAGIC
from prunebench.metrics.energy import energy_counter, rapl_counter
from prunebench.metrics.sparse_exec import is_2_4_sparse
from prunebench.metrics.timing import MIN_REPS, measure
from prunebench.models import get_model
from prunebench.pruning import (
    METHODS,
    PruneContext,
    Scope,
    apply_mask,
    masked_nonzero,
    sparsity_report,
)

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    """Same state (names, values), no hooks left behind, no stray counter attributes."""
    after = model.state_dict()
    return (after.keys() == before.keys()
            and all(torch.equal(after[k], before[k]) for k in before)
            and all(not m._forward_hooks and not m._forward_pre_hooks
                    and "total_ops" not in m.__dict__ for m in model.modules()))


@torch.no_grad()
def _random_mask(model: nn.Module, keep: float, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=generator) < keep
            for n, p in model.named_parameters() if p.dim() > 1}


@torch.no_grad()
def _apply(model: nn.Module, mask: dict[str, torch.Tensor]) -> nn.Module:
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        params[name].mul_(keep)
    return model


# --- MACs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, shape, low, high", [
    ("lenet_300_100", MNIST, 266_200, 266_200),
    ("vgg16_bn", CIFAR, 313e6, 314e6),
    ("resnet18", CIFAR, 0.56e9 * 0.98, 0.56e9 * 1.02),
])
def test_macs_of_registry_models(name, shape, low, high):
    torch.manual_seed(0)
    model = get_model(name, 10, shape)
    before = _state(model)
    macs = mac_counts(model, shape)
    assert low <= macs["macs_dense"] <= high
    assert low <= macs["macs_flopcounter"] <= high
    assert macs["macs_agree"] and macs["macs_relative_difference"] <= 0.01
    assert macs["macs_effective"] == macs["macs_dense"]  # nothing pruned
    assert _untouched(model, before)


def test_thop_leaves_the_callers_model_without_new_buffers():
    model = get_model("lenet5", 10, MNIST)
    buffers = [name for name, _ in model.named_buffers()]
    before = _state(model)
    assert macs_thop(model, MNIST) == count_macs(model, MNIST)
    assert [name for name, _ in model.named_buffers()] == buffers
    assert _untouched(model, before)


def test_half_masked_linear_has_half_the_effective_macs():
    model = nn.Sequential(nn.Linear(8, 6))
    mask = {"0.weight": torch.arange(48).reshape(6, 8) % 2 == 0}
    macs = mac_counts(_apply(model, mask), (8,))
    assert macs["macs_dense"] == 48
    assert macs["macs_effective"] == 24


def test_effective_macs_count_output_positions_of_a_conv():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False))
    with torch.no_grad():
        model[0].weight[0] = 0  # one filter of 2*3*3 weights gone, at 5x5 output positions
    macs = mac_counts(model, (2, 5, 5))
    assert macs["macs_dense"] == 3 * 2 * 9 * 25
    assert macs["macs_effective"] == 2 * 2 * 9 * 25


def _conv_chain(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in itertools.pairwise(widths):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers)


@torch.no_grad()
def test_structurally_pruned_model_loses_the_analytic_macs():
    torch.manual_seed(0)
    model = _conv_chain((3, 16, 32, 8))
    pruned = _conv_chain((3, 16, 16, 8))
    # Keep the first 16 of the middle conv's 32 filters, and the matching input channels next.
    pruned[0].load_state_dict(model[0].state_dict())
    pruned[3].weight.copy_(model[3].weight[:16])
    pruned[3].bias.copy_(model[3].bias[:16])
    pruned[6].weight.copy_(model[6].weight[:, :16])
    pruned[6].bias.copy_(model[6].bias)
    shape, positions = (3, 8, 8), 8 * 8
    removed = (16 * 16 * 9 + 16 * 8 * 9) * positions  # half of conv 2, half of conv 3's inputs
    before, after = mac_counts(model, shape), mac_counts(pruned, shape)
    assert before["macs_dense"] - after["macs_dense"] == removed
    assert before["macs_flopcounter"] - after["macs_flopcounter"] == removed
    assert after["macs_effective"] == after["macs_dense"]  # smaller, but still dense


# --- achieved sparsity: from the weights, whole model --------------------------------------


def _bn_net() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 10), nn.ReLU(), nn.Linear(10, 3))


def _zeros(tensors) -> tuple[int, int]:
    tensors = list(tensors)
    return sum(int((t == 0).sum()) for t in tensors), sum(t.numel() for t in tensors)


@torch.no_grad()
def test_achieved_sparsity_counts_zero_weights_of_the_whole_model_not_the_mask():
    """A scope that leaves the first layer out and a kept weight that is zero anyway: the
    mask's sparsity is neither what the model holds over all its weights nor over all its
    parameters."""
    model = _bn_net()
    scope = Scope(exclude_first=True)
    mask = METHODS.get("global_magnitude")(PruneContext(model, scope), 0.8)
    apply_mask(model, mask)
    kept_weight = mask["4.weight"].nonzero()[0].tolist()
    model[4].weight[tuple(kept_weight)] = 0.0  # dead, though the mask keeps it
    model[1].bias[0] = 0.0  # a BatchNorm shift at zero

    counts = sparsity_counts(model)
    zero_weights, weights = _zeros([model[0].weight, model[4].weight, model[6].weight])
    zero_params, params = _zeros(model.parameters())
    assert (counts["weights_total"], counts["weights_nonzero"]) == (weights, weights - zero_weights)
    assert counts["weight_sparsity"] == pytest.approx(zero_weights / weights, rel=1e-12)
    assert counts["param_sparsity"] == pytest.approx(zero_params / params, rel=1e-12)
    mask_sparsity = sparsity_report(mask)["weight_sparsity"]
    assert mask_sparsity == pytest.approx(0.8, abs=1e-3)
    assert counts["weight_sparsity"] < mask_sparsity  # the dense first layer counts
    assert zero_weights == sum(int((~m).sum()) for m in mask.values()) + 1  # the dead weight
    assert masked_nonzero(model, mask) == 0


def test_masked_nonzero_finds_a_mask_the_weights_do_not_follow():
    model = _bn_net()
    mask = METHODS.get("global_magnitude")(PruneContext(model), 0.5)
    pruned = sum(int((~m).sum()) for m in mask.values())
    assert masked_nonzero(model, mask) == pruned
    apply_mask(model, mask)
    assert masked_nonzero(model, mask) == 0
    with torch.no_grad():
        model[6].weight[~mask["6.weight"]] = 1.0
    assert masked_nonzero(model, mask) == int((~mask["6.weight"]).sum())


def test_a_finished_run_reports_the_sparsity_its_weights_have(tmp_path):
    """`Executor.finish`: `weight_sparsity` and `param_sparsity` from the saved model's
    weights over the whole model, the mask's own figure as `mask_sparsity`; a model whose
    weights do not follow its mask is refused, not recorded."""
    from prunebench.context import StudyContext
    from prunebench.executor import Executor
    from prunebench.runs import Run
    from prunebench.study import parse_study

    study = parse_study("tiny", {
        "data": {"name": "digits"}, "model": {"name": "mlp_digits"},
        "scope": {"exclude_first": True}, "methods": {"global_magnitude": {}},
        "sparsities": [0.8], "seeds": [0]})
    ex = Executor(StudyContext(study, tmp_path), "cpu", progress=False)
    model = ex.new_model(0)
    mask = METHODS.get("global_magnitude")(PruneContext(model, ex.scope), 0.8)
    apply_mask(model, mask)
    run = Run(tmp_path, "prune", {"case": "scope"}, {"seed": 0})
    metrics = ex.finish(run, model, ex.dense_arch, mask, {})

    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    zero_weights, total_weights = _zeros(weights)
    zero_params, total_params = _zeros(model.parameters())
    assert metrics["weight_sparsity"] == pytest.approx(zero_weights / total_weights, rel=1e-12)
    assert metrics["param_sparsity"] == pytest.approx(zero_params / total_params, rel=1e-12)
    assert metrics["mask_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert metrics["weight_sparsity"] < 0.8 - 0.05  # the first layer, out of scope, is dense
    assert json.loads((run.path / "metrics.json").read_text()) == metrics

    unmasked = Run(tmp_path, "prune", {"case": "mask not applied"}, {"seed": 0})
    with pytest.raises(RuntimeError, match="mask prunes"):
        ex.finish(unmasked, ex.new_model(0), ex.dense_arch, mask, {})
    assert not unmasked.done

    dense = Run(tmp_path, "train", {"case": "dense"}, {"seed": 0})
    dense_metrics = ex.finish(dense, ex.new_model(0), ex.dense_arch, None, {})
    assert dense_metrics["weight_sparsity"] == 0.0 and "mask_sparsity" not in dense_metrics


# --- effective sparsity -------------------------------------------------------------------

def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(),
                         nn.Linear(5, 3))


@torch.no_grad()
def test_unit_without_outgoing_weights_kills_its_incoming_row():
    model = _mlp()
    model[3].weight[:, 2] = 0  # hidden unit 2 of the first layer feeds nothing
    masks = effective_weight_masks(model, (8,))
    assert not masks["1.weight"][2].any()
    assert masks["1.weight"].sum() == 6 * 8 - 8
    with torch.inference_mode():  # the analysis needs autograd's graph even in here
        assert torch.equal(effective_weight_masks(model, (8,))["1.weight"], masks["1.weight"])
    counts = effective_counts(model, (8,))
    assert counts["weights_total"] == 48 + 30 + 15
    assert counts["weights_nonzero"] == 93 - 5
    assert counts["weights_effective_nonzero"] == 93 - 5 - 8
    assert counts["weight_sparsity_effective"] == pytest.approx(13 / 93)
    assert counts["params_effective_nonzero"] == size_counts(model)["params_nonzero"] - 8


@torch.no_grad()
def test_unit_without_incoming_weights_kills_its_outgoing_column_and_chains_on():
    model = _mlp()
    model[1].weight[4] = 0  # unit 4 of layer 1 receives nothing ...
    model[3].weight[:, [0, 1, 2, 3, 5]] = 0  # ... and is the only input left to layer 2
    masks = effective_weight_masks(model, (8,))
    # Layer 2's only nonzero column reads a dead unit, so every layer-2 unit is dead, so all
    # of layer 3 is dead; and layer 1 now feeds nothing that is used.
    assert masks["3.weight"].sum() == 0
    assert masks["5.weight"].sum() == 0
    assert masks["1.weight"].sum() == 0
    assert effective_counts(model, (8,))["weight_sparsity_effective"] == 1.0


@torch.no_grad()
def test_conv_channel_dead_through_flatten_into_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
    model[5].weight[:, 4:] = 0  # every input of the classifier from channel 1 (block of 4)
    masks = effective_weight_masks(model, (1, 6, 6))
    assert not masks["0.weight"][1].any() and masks["0.weight"][0].all()
    model[5].weight[:, 4:7] = 1  # one feature of channel 1 used again: channel 1 is alive
    assert effective_weight_masks(model, (1, 6, 6))["0.weight"].all()


class _TwoConsumers(nn.Module):
    """fc1's output feeds fc2 and fc3: a zero column of fc2 leaves fc1's units in use."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 4), nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h) + self.fc3(h)


@torch.no_grad()
def test_branching_graph_is_treated_conservatively():
    model = _TwoConsumers()
    model.fc2.weight[:, 0] = 0
    masks = effective_weight_masks(model, (4,))
    assert masks["fc1.weight"].all()
    assert masks["fc2.weight"].sum() == 6


def test_residual_network_keeps_every_nonzero_weight_when_unpruned():
    model = get_model("resnet20", 10, CIFAR)
    before = _state(model)
    counts = effective_counts(model, CIFAR)
    assert counts["weights_effective_nonzero"] == counts["weights_nonzero"]
    assert _untouched(model, before) and model.training


# --- sparse encoding ----------------------------------------------------------------------

def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


def test_sparse_encoding_shrinks_with_sparsity_and_decodes_exactly():
    torch.manual_seed(0)
    sizes = []
    for sparsity in (0.0, 0.5, 0.9, 0.99):
        model = get_model("lenet_300_100", 10, MNIST)
        state = _apply(model, _random_mask(model, 1.0 - sparsity)).state_dict()
        blob = encode_sparse(state)
        decoded = decode_sparse(blob)
        assert decoded.keys() == state.keys()
        assert all(_bitwise_equal(decoded[k], state[k]) for k in state)
        sizes.append(len(blob))
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    assert sizes[-1] < sizes[0] / 10  # ~1 bit per weight of bitmask plus 1 % of the values


@pytest.mark.parametrize("codec", ["zlib", "lzma"])
def test_sparse_encoding_is_bitwise_exact_for_awkward_tensors(codec):
    state = {
        "signed_zero_nan": torch.tensor([0.0, -0.0, math.nan, -math.inf, 1.5]),
        "bf16": torch.randn(3, 5).bfloat16(),
        "fp16": torch.tensor([0.0, 2.0]).half(),
        "scalar": torch.tensor(7),
        "flags": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        "double": torch.randn(2, 2, dtype=torch.float64),
    }
    blob = encode_sparse(state, codec)
    assert blob.startswith(MAGIC) and b"pickle" not in blob[:16]
    decoded = decode_sparse(blob)
    assert list(decoded) == list(state)
    assert all(_bitwise_equal(decoded[k], state[k]) for k in state)


def test_decoder_rejects_foreign_bytes():
    with pytest.raises(ValueError, match="magic"):
        decode_sparse(b"PK\x03\x04 not ours")


# --- sparse execution ---------------------------------------------------------------------

def _small_convnet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(8, 16, (3, 2), padding=(2, 1), dilation=(2, 1), bias=False), nn.ReLU(),
        nn.Conv2d(16, 8, 1), nn.Conv2d(8, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 3 * 4, 5))


@pytest.mark.parametrize("build, shape, converted", [
    (_mlp, (8,), 3),
    (_small_convnet, (3, 9, 9), 4),  # the grouped conv stays dense
])
@torch.no_grad()
def test_sparse_csr_mode_matches_dense(build, shape, converted):
    torch.manual_seed(0)
    model = build().eval()
    _apply(model, _random_mask(model, 0.3))
    sparse, count = to_sparse_csr(model)
    assert count == converted
    x = torch.randn(3, *shape)
    torch.testing.assert_close(sparse(x), model(x), atol=1e-5, rtol=0)
    assert any(isinstance(m, nn.Linear) for m in model.modules())  # the original is unchanged


def test_two_four_pattern_is_detected_along_the_input_dim():
    pattern = torch.tensor([1.0, 0.0, 1.0, 0.0]).repeat(2, 2)  # (2, 8), 2 of every 4 kept
    assert is_2_4_sparse(pattern)
    three_of_four = pattern.clone()
    three_of_four[1, 5] = 1.0
    assert not is_2_4_sparse(three_of_four)
    assert not is_2_4_sparse(torch.ones(4, 6))  # 6 is not a multiple of 4
    conv = torch.zeros(2, 4, 3, 3)
    conv[:, :2] = 1  # channels 0, 1 of every 4 at each kernel position
    assert is_2_4_sparse(conv)
    conv[0, 2, 1, 1] = 1
    assert not is_2_4_sparse(conv)


# --- latency, energy ----------------------------------------------------------------------

@torch.no_grad()
def test_latency_harness_gives_stable_medians_on_a_tiny_model():
    model = _mlp().eval()
    x = torch.randn(4, 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine preempts multi-threaded kernels
    try:
        runs = [measure(model, x, min_time_s=0.05, max_reps=1000, warmup=3, energy=None)
                for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    for run in runs:
        assert MIN_REPS <= run["reps"] <= 1000
        assert 0 < run["latency_median_ms"] <= run["latency_p90_ms"]
        assert run["latency_mean_ms"] > 0
        assert run["throughput_samples_per_s"] == pytest.approx(4e3 / run["latency_median_ms"])
        assert run["memory_peak_bytes"] >= run["memory_avg_bytes"] > 0
    first, second = (run["latency_median_ms"] for run in runs)
    assert 1 / 3 <= first / second <= 3


def test_repetitions_are_at_least_the_minimum_and_at_most_max_reps():
    model, x = _mlp().eval(), torch.randn(1, 8)
    assert measure(model, x, min_time_s=0.0, max_reps=1000, warmup=0, energy=None)["reps"] \
        == MIN_REPS
    assert measure(model, x, min_time_s=60.0, max_reps=25, warmup=0, energy=None)["reps"] == 25


def test_no_energy_counter_means_null_with_a_reason(tmp_path):
    counter, reason = energy_counter(torch.device("cpu"), powercap=tmp_path / "missing")
    assert counter is None
    assert "device is cpu" in reason and "missing" in reason


def test_rapl_counter_sums_packages_across_a_wrap(tmp_path):
    for name, energy, limit in [("intel-rapl:0", 990, 1000), ("intel-rapl:1", 5, 1000)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "energy_uj").write_text(f"{energy}\n")
        (tmp_path / name / "max_energy_range_uj").write_text(f"{limit}\n")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-domain (core), already inside package 0
    counter, reason = rapl_counter(tmp_path)
    assert reason is None and counter.method == "rapl_package"
    before = counter.read()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("10\n")  # wrapped: +20 µJ
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("25\n")  # +20 µJ
    assert counter.mj_between(before, counter.read()) == pytest.approx(0.040)


# --- the record ---------------------------------------------------------------------------

def test_benchmark_record_of_a_masked_model_on_cpu():
    torch.manual_seed(0)
    model = get_model("lenet5", 10, MNIST)
    mask = _random_mask(model, 0.2)
    before = _state(model)
    threads_before = torch.get_num_threads()
    threads = 2 if threads_before == 1 else 1
    record = benchmark_model(model, MNIST, mask=mask, device=torch.device("cpu"),
                             threads=threads, batch_sizes=(1, 8), min_time_s=0.02, warmup=2)
    assert torch.get_num_threads() == threads_before
    assert _untouched(model, before) and model.training
    json.dumps(record, allow_nan=False)

    # onnxruntime (a mode of every model on CPU) runs where the `export` extra is installed.
    ort = {"onnxruntime"} if onnx_unavailable_reason() is None else set()
    assert set(record["latency"]) == {"dense", "sparse_csr"} | ort
    assert all(set(by_batch) == {"1", "8"} for by_batch in record["latency"].values())
    assert record["sparse_layers_converted"] == {"sparse_csr": 5}
    assert record["mode_output_max_abs_diff"]["sparse_csr"] < 1e-5
    assert set(record["modes_skipped"]) == {"dense_fp16", "semi_structured_2_4"} | (
        {"onnxruntime"} - ort)
    assert "cpu" in record["modes_skipped"]["semi_structured_2_4"]

    assert record["energy_mj_per_sample"] is None
    assert record["latency"]["dense"]["8"]["energy_mj_per_sample"] is None
    assert record["energy_unavailable_reason"]
    assert record["memory_method"] == "rss_sampled"
    assert record["memory_peak_bytes"] == record["latency"]["dense"]["8"]["memory_peak_bytes"]
    assert record["environment"]["torch_num_threads"] == threads

    kept = sum(int(m.sum()) for m in mask.values())
    assert record["weights_nonzero"] == kept
    assert record["weights_effective_nonzero"] <= kept
    assert record["params_total"] == sum(p.numel() for p in model.parameters())
    assert record["macs_effective"] < 0.3 * record["macs_dense"]
    assert record["size_sparse_bytes"] < 0.5 * record["size_dense_bytes"]


def test_dense_model_skips_sparse_csr_and_restores_threads_on_error():
    model = _mlp()
    record = benchmark_model(model, (8,), mask=None, device=torch.device("cpu"),
                             batch_sizes=(2,), min_time_s=0.0, warmup=0,
                             modes=("dense", "sparse_csr"))
    assert "no zero weights" in record["modes_skipped"]["sparse_csr"]
    assert record["latency"]["dense"]["2"]["reps"] == MIN_REPS
    threads = torch.get_num_threads()
    with pytest.raises(KeyError, match="not a parameter"):
        benchmark_model(model, (8,), mask={"nope.weight": torch.ones(1)}, device="cpu",
                        threads=1, batch_sizes=(1,), modes=("dense",))
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("kwargs, message", [
    ({"modes": ("dense", "fast")}, "unknown modes"),
    ({"max_reps": 5}, "max_reps"),
    ({"batch_sizes": (0,)}, "batch_sizes"),
])
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        benchmark_model(_mlp(), (8,), mask=None, device="cpu", **kwargs)


class _Sleeper(nn.Module):
    """A model whose forward pass takes a fixed wall time, whatever else the CPU is doing
    (the test must not depend on the machine's load)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.linear = nn.Linear(4, 2)

    def forward(self, x):
        import time

        time.sleep(self.seconds)
        return self.linear(x)


def test_paired_speedup_sees_equal_models_as_equal_and_a_faster_one_as_faster():
    from prunebench.metrics.timing import paired_speedup

    x = torch.randn(2, 4)
    slow, same, fast = _Sleeper(0.006), _Sleeper(0.006), _Sleeper(0.002)
    assert 0.7 < paired_speedup(same, slow, x, min_time_s=0.1) < 1.4
    assert 1.8 < paired_speedup(fast, slow, x, min_time_s=0.1) < 3.5  # 3x less sleep
