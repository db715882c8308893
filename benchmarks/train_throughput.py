"""Training throughput: prunebench's loop vs a minimal loop vs a DataLoader loop.

LeNet-300-100 on MNIST, batch 64, Adam. Each loop trains the same model for the same number
of epochs from the same initialisation; we report training samples per second (best of
`--repeats`) and the overhead of masked training (80 % global magnitude mask).

    python benchmarks/train_throughput.py --mirror ../shared/data --out benchmarks/results/train_throughput.json

Targets on 2 CPU cores: prunebench within 1.3x of the minimal loop; masks cost <= 10 %.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from prunebench.config import TrainConfig
from prunebench.data import load_dataset
from prunebench.io import atomic_write_json
from prunebench.models import get_model
from prunebench.pruning import METHODS, PruneContext, Scope
from prunebench.training import train

BATCH = 64


def fresh_model(data):
    torch.manual_seed(0)
    return get_model("lenet_300_100", data.num_classes, data.input_shape)


def minimal_loop(model, x, y, epochs):
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
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
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    for _ in range(epochs):
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def timed(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data")
    ap.add_argument("--mirror", default=os.environ.get("PRUNEBENCH_DATA_MIRROR", "../shared/data"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    # No validation split: every loop does the same work (training steps only).
    data = load_dataset("mnist", args.root, mirror=args.mirror, val_size=0)
    x, y = data.train_x, data.train_y
    n = args.epochs * len(y)
    cfg = TrainConfig(epochs=args.epochs, batch_size=BATCH, optimizer="adam", lr=1.2e-3,
                      schedule="constant", momentum=0.0)
    mask = METHODS.get("global_magnitude")(PruneContext(fresh_model(data), Scope()), 0.8)

    seconds = {
        "minimal_loop": timed(lambda: minimal_loop(fresh_model(data), x, y, args.epochs), args.repeats),
        "dataloader_loop": timed(lambda: dataloader_loop(fresh_model(data), x, y, args.epochs), args.repeats),
        "prunebench_loop": timed(lambda: train(fresh_model(data), data, cfg, seed=0, progress=False), args.repeats),
        "prunebench_loop_masked": timed(
            lambda: train(fresh_model(data), data, cfg, seed=0, mask=mask, progress=False), args.repeats),
    }
    result = {
        "benchmark": "train_throughput",
        "model": "lenet_300_100", "dataset": "mnist", "batch_size": BATCH, "optimizer": "adam",
        "epochs": args.epochs, "repeats": args.repeats, "torch_threads": args.threads,
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "samples_per_s": {k: n / v for k, v in seconds.items()},
        "seconds_best": seconds,
        "prunebench_vs_minimal_slowdown": seconds["prunebench_loop"] / seconds["minimal_loop"],
        "mask_overhead_frac": seconds["prunebench_loop_masked"] / seconds["prunebench_loop"] - 1.0,
        "targets": {"prunebench_vs_minimal_slowdown": 1.3, "mask_overhead_frac": 0.10},
    }
    atomic_write_json(args.out, result)
    for k, v in result["samples_per_s"].items():
        print(f"{k:>24}: {v:10.0f} samples/s")
    print(f"prunebench / minimal: {result['prunebench_vs_minimal_slowdown']:.3f}x; "
          f"mask overhead: {100 * result['mask_overhead_frac']:.1f} %")


if __name__ == "__main__":
    main()
