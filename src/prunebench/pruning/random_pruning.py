"""Random pruning: the baseline every method must beat.

`distribution` chooses how many weights each layer keeps: `uniform` (the same sparsity in
every layer) or `global` (one random ranking across all layers). `match` copies the
per-layer allocation of another method (for example `global_magnitude`) and only randomises
*which* weights survive inside each layer, which separates "which layers" from "which weights".
"""

from __future__ import annotations

import torch

from prunebench.errors import ConfigError
from prunebench.pruning.base import METHODS, PruneContext, register_method
from prunebench.pruning.mask import Mask, global_topk_mask, layerwise_topk_mask, sparsity_report

DISTRIBUTIONS: dict[str, object] = {}


def random_scores(ctx: PruneContext) -> dict[str, torch.Tensor]:
    return {
        name: torch.rand(p.shape, generator=ctx.generator, dtype=torch.float64)
        for name, p in ctx.params.items()
    }


def register_distribution(name: str):
    """Per-layer sparsity allocations: fn(ctx, sparsity) -> {param name: layer sparsity}."""

    def deco(fn):
        DISTRIBUTIONS[name] = fn
        return fn

    return deco


@register_distribution("uniform")
def uniform_allocation(ctx: PruneContext, sparsity: float) -> dict[str, float]:
    return {name: sparsity for name in ctx.params}


@register_method("random", when="trained", distribution="uniform", match=None)
def random_pruning(ctx: PruneContext, sparsity: float) -> Mask:
    scores = random_scores(ctx)
    match, distribution = ctx.options.get("match"), ctx.options.get("distribution", "uniform")
    if match is not None:
        method = METHODS.get(match)
        if method.name == "random":
            raise ConfigError("methods.random.match cannot be 'random'")
        reference = method(ctx, sparsity)
        layers = sparsity_report(reference)["per_layer"]
        return layerwise_topk_mask(
            scores, {n: v["weight_sparsity"] for n, v in layers.items()}, ctx.mask
        )
    if distribution == "global":
        return global_topk_mask(scores, sparsity, ctx.mask)
    if distribution not in DISTRIBUTIONS:
        allowed = ", ".join(["global", *DISTRIBUTIONS])
        raise ConfigError(
            f"unknown distribution {distribution!r} (key methods.random.distribution); "
            f"allowed: {allowed}"
        )
    return layerwise_topk_mask(scores, DISTRIBUTIONS[distribution](ctx, sparsity), ctx.mask)
