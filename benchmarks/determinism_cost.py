"""What portable determinism costs: seconds per training epoch, native vs portable (and the
variants portable mode was chosen from), on the models of the studies in params.yaml.

Every variant is its own process, started with its settings in the environment (each
library reads them once, at its first use) and kept for the whole benchmark; the parent asks
them for one epoch at a time, one process working at a time, in an order that rotates from
repeat to repeat, so that they share the machine's noise. An epoch is prunebench's training
loop (`prunebench.training.train`: the study's recipe, validation included) from a fresh
model of seed 0, one torch thread (the studies' `threads`). The machine is shared, so the
primary measure is the worker's CPU time per epoch (wall time is recorded too).

Variants (prunebench.determinism):
    native               nothing pinned: the machine's own code paths
    portable             the mode: ATen AVX2, MKL COMPATIBLE, OpenBLAS Haswell, oneDNN capped
                         at AVX2, torch's oneDNN and NNPACK convolutions off
    portable_onednn      portable, but convolutions through oneDNN (capped at AVX2), whose
                         blocking follows the CPU's caches
    portable_mkl_avx2    portable, but MKL_CBWR=AVX2: honoured on Intel CPUs only (AMD: AUTO)
    pinned_avx2_strict   the first proposal: ATen avx2, MKL_CBWR=AVX2,STRICT, oneDNN AVX2

Models: cnn_digits_bn on digits (the default study `digits_cnn`), alone and eight as one
stack (the default study's fine-tuning jobs), mlp_digits on digits
(`smoke`), lenet_300_100 on MNIST (`mnist_lenet300`), lenet5 on Fashion-MNIST
(`fmnist_lenet5`); MNIST-like data from the mirror (random images of the same shape where
absent), its first `--subset` training images, so that an epoch stays short.

    python benchmarks/determinism_cost.py --out benchmarks/results/determinism_cost.json

About 4 minutes on 2 CPU cores (the committed result: `--repeats 9`, 5 minutes on a machine
shared with other work).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from prunebench.determinism import PORTABLE_ENV  # imports no torch

ROOT = Path(__file__).resolve().parents[1]

# name -> (environment at start, portable's in-process switches: oneDNN and NNPACK off)
VARIANTS = {
    "native": ({}, False),
    "portable": (PORTABLE_ENV, True),
    "portable_onednn": (PORTABLE_ENV, False),
    "portable_mkl_avx2": ({**PORTABLE_ENV, "MKL_CBWR": "AVX2"}, True),
    "pinned_avx2_strict": ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT",
                            "ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
}
# name -> (model, dataset, the study's recipe, epochs per measurement); `*_stack8`: eight
# grid points trained as one stack (prunebench.training.stacked; the default study's
# fine-tuning and lottery jobs: grouped convolutions and batched products)
MODELS = {
    "cnn_digits_bn_stack8": ("cnn_digits_bn", "digits", dict(
        optimizer="sgd", lr=0.01, momentum=0.9, batch_size=64, weight_decay=5e-4), 1),
    "cnn_digits_bn": ("cnn_digits_bn", "digits", dict(optimizer="sgd", lr=0.05, momentum=0.9,
                                                       batch_size=64, weight_decay=5e-4), 1),
    "mlp_digits": ("mlp_digits", "digits", dict(optimizer="sgd", lr=0.05, momentum=0.9,
                                                batch_size=64), 10),
    "lenet_300_100": ("lenet_300_100", "mnist", dict(optimizer="adam", lr=0.0012,
                                                     batch_size=60), 1),
    "lenet5": ("lenet5", "fashion_mnist", dict(optimizer="adam", lr=0.001, batch_size=128), 1),
}


# ---------------------------------------------------------------------------- worker


def worker(variant: str, args) -> None:
    """Answer `model` lines on stdin with the seconds of one measurement."""
    import dataclasses

    import torch

    from prunebench import determinism
    from prunebench.config import TrainConfig
    from prunebench.data import load_dataset
    from prunebench.models import get_model
    from prunebench.training import train
    from prunebench.training.stacked import train_stacked

    if VARIANTS[variant][1]:  # the environment is the variant's own, set at start
        determinism.set_switches("portable")
    torch.set_num_threads(1)
    data = {}
    for name, (_, dataset, _, _) in MODELS.items():
        if dataset in data:
            continue
        try:
            d = load_dataset(dataset, args.root, mirror=args.mirror, download=False,
                             val_size=1000 if dataset != "digits" else 0.1)
            source = "real"
        except Exception:  # noqa: BLE001 (absent data: random images of its shape)
            gen = torch.Generator().manual_seed(0)
            d = load_dataset("digits", val_size=0.1)
            d = dataclasses.replace(
                d, name=dataset, input_shape=(1, 28, 28),
                train_x=torch.randn(args.subset, 1, 28, 28, generator=gen),
                train_y=torch.randint(0, 10, (args.subset,), generator=gen),
                val_x=torch.randn(1000, 1, 28, 28, generator=gen),
                val_y=torch.randint(0, 10, (1000,), generator=gen))
            source = "random"
        if dataset != "digits":
            d = dataclasses.replace(d, train_x=d.train_x[:args.subset],
                                    train_y=d.train_y[:args.subset])
        data[dataset] = (d, source)

    def measure(name: str) -> dict[str, float]:
        """CPU seconds (this process, one thread: what the epoch computes, whatever else
        runs on the machine) and wall seconds of one epoch."""
        model_name, dataset, recipe, epochs = MODELS[name]
        d = data[dataset][0]
        cfg = TrainConfig(epochs=epochs, schedule="cosine", **recipe)
        members = 8 if name.endswith("_stack8") else 1
        models = []
        for seed in range(members):
            torch.manual_seed(seed)
            models.append(get_model(model_name, d.num_classes, d.input_shape))
        cpu, wall = time.process_time(), time.perf_counter()
        if members == 1:
            train(models[0], d, cfg, seed=0, progress=False)
        else:
            train_stacked(models, d, cfg, seeds=list(range(members)), progress=False)
        return {"cpu": (time.process_time() - cpu) / epochs,
                "wall": (time.perf_counter() - wall) / epochs}

    for name in MODELS:  # warm-up: first-use costs (oneDNN's JIT, allocations) are not an epoch
        measure(name)
    print(json.dumps({"ready": variant, "describe": determinism.describe(),
                      "data": {k: {"source": s, "train": len(d.train_y)}
                               for k, (d, s) in data.items()}}), flush=True)
    for line in sys.stdin:
        print(json.dumps(measure(line.strip())), flush=True)


# ---------------------------------------------------------------------------- parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data")
    ap.add_argument("--mirror", default=os.environ.get("PRUNEBENCH_DATA_MIRROR",
                                                       str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--subset", type=int, default=6000, help="training images of MNIST-like data")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results/determinism_cost.json")
    ap.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args)
        return

    from _stats import spread

    from prunebench.io import atomic_write_json
    from prunebench.metrics.environment import cpu_model

    started = time.perf_counter()
    base = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    procs, ready = {}, {}
    for name, (env, _) in VARIANTS.items():
        procs[name] = subprocess.Popen(
            [sys.executable, __file__, "--worker", name, "--root", args.root, "--mirror",
             args.mirror, "--subset", str(args.subset)],
            env={**base, **env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    for name, proc in procs.items():  # one at a time would only be slower: they warm up apart
        ready[name] = json.loads(proc.stdout.readline())
    seconds = {kind: {m: {v: [] for v in VARIANTS} for m in MODELS} for kind in ("cpu", "wall")}
    loads = []
    names = list(VARIANTS)
    for r in range(args.repeats):
        loads.append(os.getloadavg()[0])
        shift = r % len(names)
        for model in MODELS:
            for name in names[shift:] + names[:shift]:
                procs[name].stdin.write(model + "\n")
                procs[name].stdin.flush()
                measured = json.loads(procs[name].stdout.readline())
                for kind in ("cpu", "wall"):
                    seconds[kind][model][name].append(measured[kind])
        print(f"repeat {r + 1}/{args.repeats} (CPU s): " + "; ".join(
            f"{m} " + " ".join(f"{seconds['cpu'][m][v][-1]:.3f}" for v in names) for m in MODELS),
            flush=True)
    for proc in procs.values():
        proc.stdin.close()
        proc.wait(timeout=60)

    def ratio(kind: str, model: str, variant: str) -> dict:
        """Per repeat, the variant's time over native's (measured next to each other)."""
        values = [a / b for a, b in zip(seconds[kind][model][variant],
                                        seconds[kind][model]["native"])]
        return {**spread(values), "per_repeat": values}

    native = ready["native"]["describe"]
    result = {
        "benchmark": "determinism_cost",
        "machine": {"cpu": cpu_model() or "unknown", "cpu_count": os.cpu_count(),
                    "cpu_capability": native["cpu_capability"],
                    "mkl_branch_native": native["mkl_branch"],
                    "openblas_native": native["openblas"]},
        "torch": _version("torch"), "numpy": _version("numpy"),
        "python": platform.python_version(), "torch_threads": 1, "repeats": args.repeats,
        "variants": {name: {"env": VARIANTS[name][0], "onednn_nnpack_off": VARIANTS[name][1],
                            "in_effect": ready[name]["describe"]} for name in VARIANTS},
        "models": {m: {"model": MODELS[m][0], "dataset": MODELS[m][1], "recipe": MODELS[m][2],
                       "data": ready["native"]["data"][MODELS[m][1]]} for m in MODELS},
        "primary": "cpu: CPU seconds of the worker process per epoch (one torch thread), "
                   "robust to the other work on a shared machine; wall: elapsed seconds",
        "seconds_per_epoch": {kind: {m: {v: spread(s) for v, s in per.items()}
                                     for m, per in by_model.items()}
                              for kind, by_model in seconds.items()},
        "ratio_to_native": {kind: {m: {v: ratio(kind, m, v) for v in VARIANTS if v != "native"}
                                   for m in MODELS} for kind in ("cpu", "wall")},
        "seconds": seconds,
        "load_average_1min_per_repeat": loads,
        "wall_s": round(time.perf_counter() - started, 1),
        "decision_rule": "the default study runs portable if the cost is <= 15 % (issue #23)",
    }
    atomic_write_json(args.out, result)
    for m in MODELS:
        cells = "  ".join(f"{v} {result['ratio_to_native']['cpu'][m][v]['median']:.2f}x"
                          for v in VARIANTS if v != "native")
        native_s = result["seconds_per_epoch"]["cpu"][m]["native"]["median"]
        print(f"{m:>20}: native {native_s:.3f} CPU s/epoch;  {cells}")


def _version(module: str) -> str:
    import importlib

    return importlib.import_module(module).__version__


if __name__ == "__main__":
    main()
