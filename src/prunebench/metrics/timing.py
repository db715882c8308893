"""Latency and memory of repeated forward passes.

Latency: `warmup` untimed passes (allocator, cuDNN autotuning, lazy init), then timed passes
until `min_time_s` has elapsed and at least `MIN_REPS` ran, but at most `max_reps`. Each pass
is timed on its own, so the median and the 90th percentile describe the distribution, not
only its mean. On CUDA each pass is timed with CUDA events and synchronised (kernel time of
the pass, with launches included); on CPU with `time.perf_counter`.

Memory is sampled during the same timed loop by a background thread every `SAMPLE_INTERVAL_S`:
on CUDA the caching allocator's `memory_allocated` (the peak is the allocator's own exact
`max_memory_allocated`); on CPU the process's resident set size (psutil), whose peak can miss
a spike shorter than the sampling interval. RSS counts the whole process (Python, torch,
every model copy alive), so `memory_baseline_bytes`, sampled just before the loop, is
reported beside it: the difference is what inference adds.

Energy, where a counter exists (see `energy`), is read just before and after the timed loop.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil
import torch
from torch import Tensor, nn

from prunebench.metrics.energy import EnergyCounter

MIN_REPS = 20
SAMPLE_INTERVAL_S = 0.002


@contextmanager
def sampled(read: Callable[[], int], interval_s: float = SAMPLE_INTERVAL_S) -> Iterator[list[int]]:
    """The list of `read()` values taken every interval in a background thread while open
    (and once on entry and on exit, so it is never empty)."""
    samples = [read()]
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval_s):
            samples.append(read())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
        samples.append(read())


def memory_method(device: torch.device) -> str:
    return "cuda_allocator" if device.type == "cuda" else "rss_sampled"


def _memory_reader(device: torch.device) -> Callable[[], int]:
    if device.type == "cuda":
        return lambda: torch.cuda.memory_allocated(device)
    process = psutil.Process()
    return lambda: process.memory_info().rss


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; CPU work is done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_pass_cuda(model: nn.Module, x: Tensor) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    model(x)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0


def _time_pass_cpu(model: nn.Module, x: Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def time_passes(model: nn.Module, x: Tensor, *, min_time_s: float, max_reps: int) -> list[float]:
    """Seconds of each timed pass: at least MIN_REPS, at most max_reps, >= min_time_s in all."""
    time_pass = _time_pass_cuda if x.device.type == "cuda" else _time_pass_cpu
    seconds: list[float] = []
    deadline = time.perf_counter() + min_time_s
    while len(seconds) < max_reps and (len(seconds) < MIN_REPS or time.perf_counter() < deadline):
        seconds.append(time_pass(model, x))
    return seconds


def latency_summary(seconds: list[float], batch_size: int) -> dict[str, float | int]:
    """Median, 90th percentile and mean in ms, the repetition count, and samples per second."""
    median = statistics.median(seconds)
    return {
        "latency_median_ms": median * 1e3,
        "latency_p90_ms": statistics.quantiles(seconds, n=10, method="inclusive")[-1] * 1e3,
        "latency_mean_ms": statistics.fmean(seconds) * 1e3,
        "reps": len(seconds),
        "throughput_samples_per_s": batch_size / median,
    }


@torch.inference_mode()
def measure(model: nn.Module, x: Tensor, *, min_time_s: float, max_reps: int, warmup: int,
            energy: EnergyCounter | None) -> dict[str, float | int | None]:
    """Latency, memory and energy per sample of `model(x)`, the batch size being `len(x)`."""
    device = x.device
    for _ in range(warmup):
        model(x)
    synchronize(device)
    read = _memory_reader(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = read()
    energy_before = energy.read() if energy else None
    with sampled(read) as samples:
        seconds = time_passes(model, x, min_time_s=min_time_s, max_reps=max_reps)
    synchronize(device)
    energy_mj = energy.mj_between(energy_before, energy.read()) if energy else None
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else max(samples)
    return {
        **latency_summary(seconds, len(x)),
        "memory_peak_bytes": peak,
        "memory_avg_bytes": statistics.fmean(samples),
        "memory_baseline_bytes": baseline,
        "energy_mj_per_sample": None if energy_mj is None else energy_mj / (len(seconds) * len(x)),
    }


@torch.no_grad()
def paired_speedup(model: nn.Module, reference: nn.Module, x: Tensor, *, min_time_s: float,
                   rounds: int = 5, max_reps: int = 1000) -> float:
    """How many times faster `model` runs than `reference` on `x`: the reference's median
    latency over the model's, both timed in alternating rounds in one process.

    Latencies measured in separate processes, minutes apart, on a shared machine differ by
    more than the effects being measured (a masked model looked 1.4x faster than the dense
    model it equals on dense kernels); alternating the two within one process lets the
    machine's noise hit both alike.
    """
    model.eval()
    reference.eval()
    for net in (model, reference):
        for _ in range(3):
            net(x)
    times: dict[int, list[float]] = {0: [], 1: []}
    per_round = min_time_s / rounds
    for _ in range(rounds):
        for i, net in enumerate((model, reference)):
            times[i] += time_passes(net, x, min_time_s=per_round, max_reps=max_reps)
    return statistics.median(times[1]) / statistics.median(times[0])
