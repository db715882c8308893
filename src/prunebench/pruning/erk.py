"""Erdős–Rényi-Kernel layer densities (Evci et al. 2020), a distribution for `random`.

Layer l keeps the density eps * (sum of its weight's dimensions) / (product of them), e.g.
(out + in + kh + kw) / (out * in * kh * kw) for a conv, (out + in) / (out * in) for a linear
layer: small layers stay denser. eps is solved so that the kept weights sum to the global
target; a layer whose density would exceed 1 is made dense and eps is re-solved for the
others until none exceeds 1. The top-k helper then rounds each layer to whole weights, so
the global count is hit within one weight per layer.

Use it as `random` with `distribution: erk` (`random_pruning.DISTRIBUTIONS` lists it, so
that the option's allowed values are known when the option is declared).
"""

from __future__ import annotations

import math

from prunebench.pruning.base import PruneContext


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Per-layer densities with sum(density_l * size_l) = density * sum(size_l), each <= 1."""
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: sum(shape) / sizes[name] for name, shape in shapes.items()}
    budget = density * sum(sizes.values())
    dense: set[str] = set()
    while True:
        rest = [name for name in shapes if name not in dense]
        if not rest:
            break
        eps = (budget - sum(sizes[name] for name in dense)) / sum(raw[n] * sizes[n] for n in rest)
        # Making a layer dense only frees budget, so eps only grows: every layer over 1 now
        # stays over 1 and all of them can be fixed at once.
        over = {name for name in rest if eps * raw[name] > 1.0}
        if not over:
            break
        dense |= over
    return {name: 1.0 if name in dense else eps * raw[name] for name in shapes}


def erk_allocation(ctx: PruneContext, sparsity: float) -> dict[str, float]:
    shapes = {name: tuple(p.shape) for name, p in ctx.params.items()}
    return {name: 1.0 - d for name, d in erk_densities(shapes, 1.0 - sparsity).items()}
