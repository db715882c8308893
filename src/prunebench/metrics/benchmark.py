"""`benchmark_model`: did the pruned model get smaller and faster? One JSON-able record.

Everything is measured on a deep copy of the model, moved to `device`, in eval mode, with
`mask` (parameter name -> bool tensor, True = kept) applied to the copy: the caller's model,
its buffers, hooks, modes and torch's thread count are left as they were. Accuracy is not
measured here.

Record schema (version 1); "weights" are the conv/linear weight tensors, "params" all
parameters; MACs are per sample (batch 1):

    schema_version            1
    input_shape               [C, H, W] of one sample
    params_total              all parameters
    params_nonzero            nonzero parameters
    params_effective_nonzero  params_nonzero less the nonzero weights that are not effective
    weights_total             conv/linear weights
    weights_nonzero           nonzero conv/linear weights
    weights_effective_nonzero nonzero weights on an input-output path (`effective`)
    weight_sparsity           1 - weights_nonzero / weights_total
    weight_sparsity_effective 1 - weights_effective_nonzero / weights_total
    size_dense_bytes          torch.save of the state dict (`encoding`)
    size_sparse_bytes         bitmask + nonzero values, compressed (`encoding.encode_sparse`)
    size_sparse_codec         "zlib" or "lzma"
    macs_dense                thop, BatchNorm folded (`macs`)
    macs_flopcounter          torch FlopCounterMode / 2, the cross-check
    macs_relative_difference  |macs_dense - macs_flopcounter| / macs_flopcounter
    macs_agree                macs_relative_difference <= 0.01
    macs_effective            macs_dense less the MACs of zero conv/linear weights
    latency                   {mode: {str(batch_size): entry}}, entry (`timing`):
        latency_median_ms, latency_p90_ms, latency_mean_ms  per forward pass of the batch
        reps                      timed passes
        throughput_samples_per_s  batch_size / median latency
        memory_peak_bytes, memory_avg_bytes, memory_baseline_bytes  during the timed loop
        energy_mj_per_sample      energy of the timed loop / samples run, or null
    memory_method             "cuda_allocator" (allocated tensors) or "rss_sampled" (process RSS)
    memory_peak_bytes         the headline entry's (see below)
    memory_avg_bytes          the headline entry's
    energy_method             "nvml_total_energy", "rapl_package" or null
    energy_mj_per_sample      the headline entry's; null when no counter is readable
    energy_unavailable_reason why energy is null (null when it is not)
    modes_skipped             {mode: reason} for modes requested but not run
    sparse_layers_converted   {mode: layers converted} for sparse_csr, semi_structured_2_4
    mode_settings             {mode: settings} of modes with their own runtime: onnxruntime's
                              session (`prunebench.export.session_settings`: version, opset,
                              threads, execution mode, graph optimisation level)
    mode_output_max_abs_diff  {mode: max |output - dense output|} on the first batch, for
                              every mode run besides dense (dense must have been requested)
    environment               device, CPU model, threads, driver and library versions
    settings                  the arguments the numbers depend on

The headline entry is the first mode run (dense, unless excluded) at the largest batch size.

Modes (`MODES`): "dense" (the model as is: a structurally pruned model is a smaller dense
model), "dense_fp16" (CUDA only; the baseline for the fp16 semi-structured mode),
"sparse_csr" (CPU only; sparse Linear/Conv2d layers as CSR sparse matmuls),
"semi_structured_2_4" (CUDA only; 2:4 sparse Linear weights on sparse tensor cores; see
`sparse_exec`) and "onnxruntime" (CPU only; the model exported to ONNX and run by ONNX
Runtime with as many intra-op threads as torch has, sequential execution, ORT_ENABLE_ALL;
see `prunebench.export`; needs the optional `export` extra). Every mode is timed by the same
`timing.measure` on the same seeded inputs, so its latency compares with the dense mode's and,
through the benchmark stage's paired speed-up, with the dense model's. A requested mode that
cannot run here (wrong device, missing package, a model its exporter cannot export) is
skipped with its reason, not an error.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from prunebench.metrics.effective import LAYER_TYPES, effective_counts
from prunebench.metrics.encoding import CODECS, size_dense_bytes, size_sparse_bytes
from prunebench.metrics.energy import energy_counter
from prunebench.metrics.environment import environment
from prunebench.metrics.macs import mac_counts
from prunebench.metrics.size import size_counts
from prunebench.metrics.sparse_exec import (
    has_zero_weights,
    semi_structured_skip_reason,
    to_semi_structured,
    to_sparse_csr,
)
from prunebench.metrics.timing import MIN_REPS, measure, memory_method

SCHEMA_VERSION = 1
MODES = ("dense", "dense_fp16", "sparse_csr", "semi_structured_2_4", "onnxruntime")
ORT_ATOL = ORT_RTOL = 1e-4  # as `prunebench.export` checks an export (fp32)
_FP16_MODES = ("dense_fp16", "semi_structured_2_4")  # the others run in the model's dtype


@torch.no_grad()
def _masked_copy(model: nn.Module, mask: Mapping[str, Tensor] | None,
                 device: torch.device) -> nn.Module:
    """A deep copy on `device`, in eval mode, with masked weights set to exactly zero."""
    work = copy.deepcopy(model).to(device).eval()
    params = dict(work.named_parameters())
    for name, keep in (mask or {}).items():
        if name not in params:
            raise KeyError(f"mask entry {name!r} is not a parameter of the model")
        params[name].mul_(keep.to(device=device, dtype=params[name].dtype))
    return work


def _has_sparse_weights(model: nn.Module) -> bool:
    return any(has_zero_weights(m) for m in model.modules() if isinstance(m, LAYER_TYPES))


def _onnxruntime_model(work: nn.Module, input_shape: tuple[int, ...], device: torch.device
                       ) -> tuple[nn.Module | None, str | None, None]:
    """ONNX Runtime on CPU with torch's current thread count, or why it cannot run."""
    from prunebench import export

    if device.type != "cpu":
        return None, f"ONNX Runtime is measured on CPU only; device is {device.type}", None
    reason = export.onnx_unavailable_reason()
    if reason:
        return None, reason, None
    try:
        return export.onnx_runtime_model(work, input_shape, torch.get_num_threads()), None, None
    except Exception as err:  # noqa: BLE001 (an op the exporter or ORT lacks: skip the mode)
        first = str(err).strip().splitlines()[0] if str(err).strip() else "failed"
        return None, f"ONNX export failed: {type(err).__name__}: {first}", None


def _mode_model(mode: str, work: nn.Module, device: torch.device,
                input_shape: tuple[int, ...]) -> tuple[nn.Module | None, str | None, int | None]:
    """(model to run, None, layers converted) or (None, reason it cannot run, None)."""
    if mode == "dense":
        return work, None, None
    if mode == "onnxruntime":
        return _onnxruntime_model(work, input_shape, device)
    if mode == "dense_fp16":
        if device.type != "cuda":
            reason = f"fp16 baseline of semi_structured_2_4, CUDA only; device is {device.type}"
            return None, reason, None
        return copy.deepcopy(work).half(), None, None
    if mode == "sparse_csr":
        if device.type != "cpu":
            return None, f"measured on CPU only; device is {device.type}", None
        if not _has_sparse_weights(work):
            return None, "no zero weights: the model is dense", None
        converted, count = to_sparse_csr(work)
        if not count:
            return None, "no Linear/ungrouped zero-padded Conv2d layer has zero weights", None
        return converted, None, count
    reason = semi_structured_skip_reason(work, device)
    if reason:
        return None, reason, None
    converted, count, errors = to_semi_structured(work)
    if not count:
        reason = "no Linear weight could be converted: " + "; ".join(errors or ["no 2:4 Linear"])
        return None, reason, None
    return converted, None, count


def _inputs(batch_size: int, input_shape: tuple[int, ...], seed: int, device: torch.device,
            dtype: torch.dtype) -> Tensor:
    """Standard normal inputs, identical for every mode with the same seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, *input_shape, generator=generator).to(device=device, dtype=dtype)


@torch.inference_mode()
def _output(model: nn.Module, batch_size: int, input_shape: tuple[int, ...], seed: int,
            device: torch.device, dtype: torch.dtype) -> Tensor:
    return model(_inputs(batch_size, input_shape, seed, device, dtype))


def _check_arguments(modes: Sequence[str], batch_sizes: Sequence[int], max_reps: int,
                     min_time_s: float, warmup: int, sparse_codec: str) -> None:
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown modes {unknown}; allowed: {', '.join(MODES)}")
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                              for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    if max_reps < MIN_REPS:
        raise ValueError(f"max_reps must be at least {MIN_REPS}, got {max_reps}")
    if min_time_s < 0 or warmup < 0:
        raise ValueError("min_time_s and warmup must not be negative")
    if sparse_codec not in CODECS:
        raise ValueError(f"unknown codec {sparse_codec!r}; allowed: {', '.join(CODECS)}")


def benchmark_model(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    mask: Mapping[str, Tensor] | None,
    device: torch.device,
    threads: int | None = None,
    batch_sizes: Sequence[int] = (1, 128),
    min_time_s: float = 0.5,
    max_reps: int = 1000,
    warmup: int = 10,
    modes: Sequence[str] | None = None,
    seed: int = 0,
    sparse_codec: str = "zlib",
) -> dict:
    """Measure size, MACs, latency, memory and energy of `model`; the record is described in
    the module docstring. `threads` (default: torch's current setting) is set for the whole
    run and restored afterwards; `modes` defaults to all of `MODES`."""
    device = torch.device(device)
    modes = tuple(MODES if modes is None else modes)
    input_shape = tuple(input_shape)
    _check_arguments(modes, batch_sizes, max_reps, min_time_s, warmup, sparse_codec)
    threads_before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        return _benchmark(model, input_shape, mask, device, tuple(batch_sizes), min_time_s,
                          max_reps, warmup, modes, seed, sparse_codec)
    finally:
        torch.set_num_threads(threads_before)


def _benchmark(model: nn.Module, input_shape: tuple[int, ...], mask: Mapping[str, Tensor] | None,
               device: torch.device, batch_sizes: tuple[int, ...], min_time_s: float,
               max_reps: int, warmup: int, modes: tuple[str, ...], seed: int,
               sparse_codec: str) -> dict:
    work = _masked_copy(model, mask, device)
    counts = effective_counts(work, input_shape)
    state = {name: tensor.cpu() for name, tensor in work.state_dict().items()}
    energy, energy_reason = energy_counter(device)
    record = {
        "schema_version": SCHEMA_VERSION,
        "input_shape": list(input_shape),
        **size_counts(work),
        **counts,
        "size_dense_bytes": size_dense_bytes(state),
        "size_sparse_bytes": size_sparse_bytes(state, sparse_codec),
        "size_sparse_codec": sparse_codec,
        **mac_counts(work, input_shape),
        "latency": {},
        "memory_method": memory_method(device),
        "memory_peak_bytes": None,
        "memory_avg_bytes": None,
        "energy_method": energy.method if energy else None,
        "energy_mj_per_sample": None,
        "energy_unavailable_reason": energy_reason,
        "modes_skipped": {},
        "sparse_layers_converted": {},
        "mode_output_max_abs_diff": {},
        "mode_settings": {},
        "environment": environment(device),
        "settings": {
            "threads": torch.get_num_threads(), "batch_sizes": list(batch_sizes),
            "min_time_s": min_time_s, "min_reps": MIN_REPS, "max_reps": max_reps,
            "warmup": warmup, "seed": seed, "modes": list(modes),
            "inputs": "standard normal, seeded",
        },
    }
    first, model_dtype = batch_sizes[0], next(work.parameters()).dtype
    dense_output = _output(work, first, input_shape, seed, device, model_dtype) \
        if "dense" in modes else None
    for mode in modes:
        runnable, reason, converted = _mode_model(mode, work, device, input_shape)
        if runnable is None:
            record["modes_skipped"][mode] = reason
            continue
        if converted is not None:
            record["sparse_layers_converted"][mode] = converted
        if mode == "onnxruntime":
            record["mode_settings"][mode] = runnable.settings
        dtype = torch.float16 if mode in _FP16_MODES else model_dtype
        if dense_output is not None and mode != "dense":
            output = _output(runnable, first, input_shape, seed, device, dtype)
            record["mode_output_max_abs_diff"][mode] = float(
                (output.float() - dense_output).abs().max())
            if mode == "onnxruntime" and not torch.allclose(
                    output.float(), dense_output.float(), rtol=ORT_RTOL, atol=ORT_ATOL):
                # an exported graph that computes something else is not timed as the model
                record["modes_skipped"][mode] = (
                    f"outputs differ from PyTorch's by up to "
                    f"{record['mode_output_max_abs_diff'][mode]:.3g} (allowed atol "
                    f"{ORT_ATOL:g} + rtol {ORT_RTOL:g})")
                continue
        record["latency"][mode] = {
            str(batch): measure(runnable, _inputs(batch, input_shape, seed, device, dtype),
                                min_time_s=min_time_s, max_reps=max_reps, warmup=warmup,
                                energy=energy)
            for batch in batch_sizes
        }
    if record["latency"]:
        headline = next(iter(record["latency"].values()))[str(max(batch_sizes))]
        for key in ("memory_peak_bytes", "memory_avg_bytes", "energy_mj_per_sample"):
            record[key] = headline[key]
    return record
