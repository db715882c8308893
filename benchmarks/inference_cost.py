"""Inference cost of a registry model, dense and randomly pruned, via `benchmark_model`.

A quick way to see the record the pipeline stage will write, and whether unstructured
sparsity buys speed on this machine (compare the modes' latencies):

    python benchmarks/inference_cost.py --model lenet_300_100 --shape 1 28 28 --sparsity 0.9 \
        --out benchmarks/results/inference_cost.json
"""

from __future__ import annotations

import argparse
import json

import torch

from prunebench.metrics import MODES, benchmark_model
from prunebench.models import get_model


def random_mask(model: torch.nn.Module, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """Each conv/linear weight keeps a random (1 - sparsity) of its entries."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(p.shape, generator=generator) >= sparsity
            for name, p in model.named_parameters() if p.dim() > 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet_300_100")
    parser.add_argument("--shape", type=int, nargs=3, default=(1, 28, 28))
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=(1, 128))
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument("--modes", nargs="+", choices=MODES)
    parser.add_argument("--out")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = get_model(args.model, args.classes, tuple(args.shape))
    record = benchmark_model(
        model, tuple(args.shape), mask=random_mask(model, args.sparsity, seed=0),
        device=torch.device(args.device), threads=args.threads,
        batch_sizes=tuple(args.batch_sizes), min_time_s=args.min_time, modes=args.modes)
    text = json.dumps(record, indent=2, allow_nan=False)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
