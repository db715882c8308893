"""Training throughput: prunebench's loop vs a minimal loop vs a DataLoader loop, and torch's
three optimiser-step implementations.

LeNet-300-100 on MNIST, batch 64. Each loop trains the same model for the same number of
epochs from the same initialisation with Adam; we report training samples per second and
the overhead of masked training (80 % global magnitude mask). The hand-written loops use the
same optimiser implementation as prunebench's loop (its default, fused), so their ratio is
the loop's own overhead. Then prunebench's loop with Adam and with SGD (momentum 0.9,
Nesterov, weight decay 5e-4), each with `optimizer_impl` fused, foreach and forloop (torch's
default on CPU, and the loop's implementation before fused became the default).

The machine is shared and noisy, so the variants run interleaved (their order rotates from
repeat to repeat) and every number is a median over the repeats with its spread; a ratio is
taken within each repeat, between variants that ran next to each other.

    python benchmarks/train_throughput.py --mirror ../shared/data --out benchmarks/results/train_throughput.json

Targets on 2 CPU cores: prunebench within 1.3x of the minimal loop; masks cost <= 10 %.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from _stats import spread
from prunebench.config import TrainConfig
from prunebench.metrics.environment import cpu_model
from prunebench.data import load_dataset
from prunebench.io import atomic_write_json
from prunebench.models import get_model
from prunebench.pruning import METHODS, PruneContext, Scope
from prunebench.training import train
from prunebench.training.loop import OPTIMIZER_IMPLEMENTATION

BATCH = 64
ADAM = TrainConfig(epochs=1, batch_size=BATCH, optimizer="adam", lr=1.2e-3, schedule="constant",
                   momentum=0.0)
SGD = TrainConfig(epochs=1, batch_size=BATCH, optimizer="sgd", lr=0.05, momentum=0.9,
                  nesterov=True, weight_decay=5e-4, schedule="constant")
IMPLS = ("fused", "foreach", "forloop")


def fresh_model(data):
    torch.manual_seed(0)
    return get_model("lenet_300_100", data.num_classes, data.input_shape)


def adam(model) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=ADAM.lr,
                            **OPTIMIZER_IMPLEMENTATION[ADAM.optimizer_impl])


def minimal_loop(model, x, y, epochs):
    opt = adam(model)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), BATCH):
            idx = order[i : i + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def dataloader_loop(model, x, y, epochs):
    opt = adam(model)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    for _ in range(epochs):
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def interleaved(fns: dict[str, Callable[[], None]],
                repeats: int) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds per repeat of every variant, run in an order that rotates each repeat, and
    the 1-minute load average at the start of each repeat (the machine is shared)."""
    names = list(fns)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    loads = []
    for r in range(repeats):
        loads.append(os.getloadavg()[0])
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            seconds[name].append(time.perf_counter() - start)
        done = ", ".join(f"{n} {seconds[n][-1]:.2f}s" for n in names)
        print(f"repeat {r + 1}/{repeats}: {done}", flush=True)
    return seconds, loads



def ratio(seconds: dict[str, list[float]], numerator: str, denominator: str,
          minus: float = 0.0) -> dict:
    """Per-repeat time ratio numerator / denominator (less `minus`), summarised."""
    values = [a / b - minus for a, b in zip(seconds[numerator], seconds[denominator])]
    return {**spread(values), "per_repeat": values}



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data")
    ap.add_argument("--mirror", default=os.environ.get("PRUNEBENCH_DATA_MIRROR", "../shared/data"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    # No validation split: every loop does the same work (training steps only).
    data = load_dataset("mnist", args.root, mirror=args.mirror, val_size=0)
    x, y = data.train_x, data.train_y
    n = args.epochs * len(y)
    adam_cfg = dataclasses.replace(ADAM, epochs=args.epochs)
    sgd_cfg = dataclasses.replace(SGD, epochs=args.epochs)
    mask = METHODS.get("global_magnitude")(PruneContext(fresh_model(data), Scope()), 0.8)

    def prunebench(cfg, **kw):
        return lambda: train(fresh_model(data), data, cfg, seed=0, progress=False, **kw)

    variants = {
        "minimal_loop": lambda: minimal_loop(fresh_model(data), x, y, args.epochs),
        "dataloader_loop": lambda: dataloader_loop(fresh_model(data), x, y, args.epochs),
        "prunebench_loop": prunebench(adam_cfg),
        "prunebench_loop_masked": prunebench(adam_cfg, mask=mask),
    }
    for impl in IMPLS:
        for name, cfg in (("adam", adam_cfg), ("sgd", sgd_cfg)):
            variants[f"{name}_{impl}"] = prunebench(dataclasses.replace(cfg, optimizer_impl=impl))
    load_start = os.getloadavg()
    seconds, loads = interleaved(variants, args.repeats)

    result = {
        "benchmark": "train_throughput",
        "model": "lenet_300_100", "dataset": "mnist", "batch_size": BATCH,
        "optimizer": "adam", "optimizer_impl": adam_cfg.optimizer_impl,
        "epochs": args.epochs, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model() or "unknown",
        "cpu_count": os.cpu_count(), "load_average_start": load_start,
        "load_average_1min_per_repeat": loads, "load_average_end": os.getloadavg(),
        "samples_per_s": {k: spread([n / t for t in v]) for k, v in seconds.items()},
        "seconds": seconds,
        "prunebench_vs_minimal_slowdown": ratio(seconds, "prunebench_loop", "minimal_loop"),
        "mask_overhead_frac": ratio(seconds, "prunebench_loop_masked", "prunebench_loop",
                                    minus=1.0),
        "optimizer_impls": {
            "recipes": {"adam": dataclasses.asdict(adam_cfg), "sgd": dataclasses.asdict(sgd_cfg)},
            "speedup_over_forloop": {
                f"{opt}_{impl}": ratio(seconds, f"{opt}_forloop", f"{opt}_{impl}")
                for opt in ("adam", "sgd") for impl in IMPLS[:2]},
        },
        "targets": {"prunebench_vs_minimal_slowdown": 1.3, "mask_overhead_frac": 0.10},
    }
    atomic_write_json(args.out, result)
    for k, v in result["samples_per_s"].items():
        print(f"{k:>24}: {v['median']:10.0f} samples/s [{v['min']:.0f}-{v['max']:.0f}]")
    slow = result["prunebench_vs_minimal_slowdown"]
    print(f"prunebench / minimal: {slow['median']:.3f}x [{slow['min']:.3f}-{slow['max']:.3f}]; "
          f"mask overhead: {100 * result['mask_overhead_frac']['median']:.1f} %")
    for k, v in result["optimizer_impls"]["speedup_over_forloop"].items():
        print(f"{k:>14} vs forloop: {v['median']:.2f}x [{v['min']:.2f}-{v['max']:.2f}]")


if __name__ == "__main__":
    main()
