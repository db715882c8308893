"""Grid throughput: K grid points trained one after another vs as one stack.

A pruning study trains one architecture many times. This times K = 1, 4, 8, 16 masked
members (global-magnitude masks at sparsities spread over 0-95 %, each member its own
initialisation) of LeNet-300-100 and of LeNet-5 on MNIST (batch 64, Adam), three ways:

- `sequential`: `train(...)` K times, one after another (what a stage does today);
- `stacked_one_seed`: `train_stacked(...)` with one seed for all (the levels or methods of one
  seed: one data stream, each batch shared);
- `stacked_own_seeds`: `train_stacked(...)` with K seeds (each member its own batch order).

The machine is shared and noisy, so the variants run interleaved (their order rotates from
repeat to repeat) and every number is a median over the repeats with its spread; a speed-up
is the ratio of the sequential and stacked times of the same repeat, which ran next to each
other. Samples/s counts every member's training samples (K x samples per epoch).

    python benchmarks/grid_throughput.py --mirror ../shared/data --out benchmarks/results/grid_throughput.json

Target on the 2-core development CPU: stacked >= 3x sequential at K = 8.

The JSON also says how far from the machine each variant runs (`roofline`): the FLOPs of one
training step per sample (torch's `FlopCounterMode`, forward and backward), the same thread
count's sustained matrix-multiply rate (a 2048^3 fp32 GEMM, best of several), each variant's
achieved GFLOP/s, and `ceiling_speedup`: the sequential time over the time the stack's
matrix products alone would take at that peak rate. No stack can beat it without doing less
arithmetic (it ignores the optimiser step, the masks and every memory-bound kernel), so a
target above it is out of reach on this machine, whatever the implementation. A profiled
stacked epoch per K adds where its time goes (`stacked_time_fractions`: matrix products and
convolutions, the optimiser's kernel, re-masking, everything else) and `kernel_bound_speedup`,
the speed-up the stack would reach if everything but the matrix products and the optimiser
kernel were free.

`--device cuda` runs the same comparison on a GPU (data and models on it, timings after a
synchronise; the GEMM peak is an 8192^3 fp32 product there). The profile is left out there
(`kernel_bound_speedup` null): it reads CPU self time, which on CUDA is kernel launches.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from _stats import spread
from prunebench.config import TrainConfig
from prunebench.metrics.environment import cpu_model
from prunebench.metrics.timing import synchronize
from prunebench.data import DataSplits, load_dataset
from prunebench.io import atomic_write_json
from prunebench.models import get_model
from prunebench.pruning import METHODS, PruneContext, Scope
from prunebench.training import train
from prunebench.training.stacked import train_stacked

BATCH = 64
VARIANTS = ("sequential", "stacked_one_seed", "stacked_own_seeds")


def mnist_or_synthetic(root: str, mirror: str, samples: int) -> tuple[DataSplits, str]:
    """The first `samples` MNIST training images, or synthetic tensors of MNIST's shape."""
    try:
        data = load_dataset("mnist", root, mirror=mirror, download=False, val_size=0)
        source = "mnist"
    except Exception as err:  # noqa: BLE001 (no copy here, no mirror: fall back)
        print(f"MNIST not available ({type(err).__name__}: {err}); using synthetic tensors")
        g = torch.Generator().manual_seed(0)
        x = torch.randn(samples, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (samples,), generator=g)
        data = DataSplits("synthetic", 10, (1, 28, 28), x, y, x[:0], y[:0], x[:0], y[:0], None)
        source = "synthetic"
    x, y = data.train_x[:samples], data.train_y[:samples]
    empty_x, empty_y = x[:0], y[:0]  # no validation: every variant times training alone
    return DataSplits(data.name, 10, (1, 28, 28), x, y, empty_x, empty_y, empty_x, empty_y,
                      None), source


def grid(name: str, k: int, device: torch.device
         ) -> tuple[list[torch.nn.Module], list[dict | None]]:
    """K initialisations on `device` and their masks, sparsities spread over 0-95 %."""
    models, masks = [], []
    for i in range(k):
        torch.manual_seed(i)
        model = get_model(name, 10, (1, 28, 28))
        sparsity = 0.95 * i / max(1, k - 1)
        mask = None
        if sparsity > 0:
            mask = METHODS.get("global_magnitude")(PruneContext(copy.deepcopy(model), Scope()),
                                                   sparsity)
        models.append(model.to(device))
        masks.append(None if mask is None else {n: m.to(device) for n, m in mask.items()})
    return models, masks


def run(variant: str, models, masks, data, recipe) -> tuple[float, list]:
    models = [copy.deepcopy(m) for m in models]
    device = next(models[0].parameters()).device
    synchronize(device)
    start = time.perf_counter()
    if variant == "sequential":
        for model, mask in zip(models, masks):
            train(model, data, recipe, seed=0, mask=mask, progress=False)
    else:
        seeds = [0] * len(models) if variant == "stacked_one_seed" else list(range(len(models)))
        train_stacked(models, data, recipe, seeds=seeds, masks=masks, progress=False)
    synchronize(device)
    return time.perf_counter() - start, models


def flops_per_sample(name: str, batch: int = BATCH) -> float:
    """FLOPs of one training step (forward and backward) per sample, as torch counts them
    (2 per multiply-add of every matrix product and convolution)."""
    torch.manual_seed(0)
    model = get_model(name, 10, (1, 28, 28))
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def gemm_peak_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """The device's (on CPU: this thread count's) sustained fp32 matrix-multiply rate
    (GFLOP/s), best of `repeats`."""
    size = size * 4 if device.type == "cuda" else size
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


KERNELS = {  # self-time categories of a profiled stacked epoch, by aten op name
    "matmul_conv": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "conv"),
    "optimizer": ("adam", "sgd", "aten::_foreach"),
    "masks": ("aten::mul_",),
}


def step_breakdown(models, masks, data, recipe) -> dict:
    """Where one stacked (one-seed) epoch's CPU time goes, from torch's profiler: self time of
    the matrix products and convolutions, of the optimiser's kernel, of re-zeroing masked
    weights (`mul_`), and of everything else (autograd bookkeeping, activations, the loss,
    batching), as fractions of their sum."""
    models = [copy.deepcopy(m) for m in models]
    seeds = [0] * len(models)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        train_stacked(models, data, recipe, seeds=seeds, masks=masks, progress=False)
    spent = dict.fromkeys([*KERNELS, "other"], 0.0)
    for event in prof.key_averages():
        name = event.key.lower()
        kind = next((k for k, keys in KERNELS.items() if any(x.lower() in name for x in keys)),
                    "other")
        spent[kind] += event.self_cpu_time_total
    total = sum(spent.values())
    return {k: v / total for k, v in spent.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data")
    ap.add_argument("--mirror", default=os.environ.get("PRUNEBENCH_DATA_MIRROR", "../shared/data"))
    ap.add_argument("--models", nargs="+", default=["lenet_300_100", "lenet5"])
    ap.add_argument("--ks", nargs="+", type=int, default=[1, 4, 8, 16])
    ap.add_argument("--samples", type=int, default=6400, help="training samples per member")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default="benchmarks/results/grid_throughput.json")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch finds no CUDA device here")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data, source = mnist_or_synthetic(args.root, args.mirror, args.samples)
    data = data.to(device)
    recipe = TrainConfig(epochs=1, batch_size=BATCH, optimizer="adam", lr=1.2e-3,
                         schedule="constant")
    load_start = os.getloadavg()
    flops = {name: flops_per_sample(name) for name in args.models}
    peaks = []
    grids = {(name, k): grid(name, k, device) for name in args.models for k in args.ks}
    for (name, k), (models, masks) in grids.items():  # warm-up: allocator, kernels
        for variant in VARIANTS:
            run(variant, models[:2], masks[:2], DataSplits(
                data.name, 10, (1, 28, 28), data.train_x[:BATCH * 2], data.train_y[:BATCH * 2],
                data.val_x, data.val_y, data.test_x, data.test_y, None), recipe)
    seconds = {key: {v: [] for v in VARIANTS} for key in grids}
    agreement = {}
    load_per_repeat = []
    for r in range(args.repeats):
        load_per_repeat.append(os.getloadavg()[0])
        peaks.append(gemm_peak_gflops(device))
        for key, (models, masks) in grids.items():
            order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
            trained = {}
            for variant in order:
                elapsed, trained[variant] = run(variant, models, masks, data, recipe)
                seconds[key][variant].append(elapsed)
            agreement[key] = max(
                (a - b).abs().max().item()
                for sm, tm in zip(trained["sequential"], trained["stacked_one_seed"])
                for a, b in zip(sm.parameters(), tm.parameters()))
            print(f"repeat {r + 1}/{args.repeats} {key[0]} K={key[1]}: " + ", ".join(
                f"{v} {seconds[key][v][-1]:.2f}s" for v in VARIANTS), flush=True)

    # The profile reads CPU self time, which on CUDA is kernel launches, not the kernels.
    breakdown = {key: step_breakdown(models, masks, data, recipe) if device.type == "cpu"
                 else None for key, (models, masks) in grids.items()}
    results = {}
    peak = max(peaks)
    for (name, k), times in seconds.items():
        samples = k * args.samples
        gemm_bound_s = samples * flops[name] / (peak * 1e9)
        entry = {
            "roofline": {
                "gflops_per_s": {v: statistics.median(samples * flops[name] / t / 1e9
                                                      for t in times[v]) for v in VARIANTS},
                "matmul_seconds_at_peak": gemm_bound_s,
                "ceiling_speedup": statistics.median(times["sequential"]) / gemm_bound_s,
                # The stacked epoch's time by kind of work; `kernel_bound_speedup` is the
                # speed-up if everything but the matrix products and the optimiser's kernel
                # took no time at all.
                "stacked_time_fractions": breakdown[(name, k)],
                "kernel_bound_speedup": None if breakdown[(name, k)] is None
                else statistics.median(
                    [s / t for s, t in zip(times["sequential"], times["stacked_one_seed"])])
                / (breakdown[(name, k)]["matmul_conv"] + breakdown[(name, k)]["optimizer"]),
            },
            "samples_per_s": {v: spread([samples / t for t in times[v]]) for v in VARIANTS},
            "speedup_over_sequential": {
                v: {**spread([s / t for s, t in zip(times["sequential"], times[v])]),
                    "per_repeat": [s / t for s, t in zip(times["sequential"], times[v])]}
                for v in VARIANTS[1:]},
            "seconds": times,
            "max_abs_weight_diff_stacked_vs_sequential": agreement[(name, k)],
        }
        results.setdefault(name, {})[str(k)] = entry
    result = {
        "benchmark": "grid_throughput",
        "data": source, "samples_per_member": args.samples, "batch_size": BATCH,
        "optimizer": recipe.optimizer, "optimizer_impl": recipe.optimizer_impl,
        "masks": "global magnitude, sparsity 0.95 * i / (K - 1) for member i",
        "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model() or "unknown",
        "cpu_count": os.cpu_count(), "load_average_start": load_start,
        "load_average_1min_per_repeat": load_per_repeat, "load_average_end": os.getloadavg(),
        "roofline": {
            "flops_per_sample": flops,
            "gemm_peak_gflops_per_s": peak, "gemm_peak_per_repeat": peaks,
            "note": "ceiling_speedup: sequential time / (the stack's matrix-product FLOPs at the "
                    "peak GEMM rate); no stack beats it without doing less arithmetic",
        },
        "models": results,
        "target": {"K": 8, "speedup_over_sequential": 3.0},
    }
    atomic_write_json(args.out, result)
    for name, by_k in results.items():
        for k, entry in by_k.items():
            sequential = entry["samples_per_s"]["sequential"]["median"]
            speedups = ", ".join(
                f"{v} {sp['median']:.2f}x [{sp['min']:.2f}-{sp['max']:.2f}]"
                for v, sp in entry["speedup_over_sequential"].items())
            bound = entry["roofline"]["kernel_bound_speedup"]
            print(f"{name:>14} K={k:>2}: sequential {sequential:8.0f} samples/s; {speedups}; "
                  f"ceiling {entry['roofline']['ceiling_speedup']:.2f}x, kernel bound "
                  + ("n/a" if bound is None else f"{bound:.2f}x"))


if __name__ == "__main__":
    main()
