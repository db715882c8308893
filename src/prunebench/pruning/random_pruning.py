"""Random pruning: the baseline every method must beat.

`distribution` chooses how many weights each layer keeps: `uniform` (the same sparsity in
every layer), `erk` (Erdős–Rényi-Kernel, small layers stay denser) or `global` (one random
ranking across all layers). `match` copies the per-layer allocation of another method (for
example `global_magnitude`) and only randomises *which* weights survive inside each layer,
which separates "which layers" from "which weights".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch

from prunebench.errors import ConfigError
from prunebench.options import Option, choice
from prunebench.pruning.base import METHODS, PruneContext, PruningMethod, register_method
from prunebench.pruning.erk import erk_allocation
from prunebench.pruning.mask import Mask, global_topk_mask, layerwise_topk_mask, sparsity_report


def random_scores(ctx: PruneContext) -> dict[str, torch.Tensor]:
    return {
        name: torch.rand(p.shape, generator=ctx.generator, dtype=torch.float64)
        for name, p in ctx.params.items()
    }


def uniform_allocation(ctx: PruneContext, sparsity: float) -> dict[str, float]:
    return {name: sparsity for name in ctx.params}


# Per-layer sparsity allocations: fn(ctx, sparsity) -> {param name: layer sparsity}. Listed
# here, not registered from their modules, so that `distribution` declares its choices.
DISTRIBUTIONS: dict[str, Callable[[PruneContext, float], dict[str, float]]] = {
    "uniform": uniform_allocation,
    "erk": erk_allocation,
}


def runs_inside_another(method: PruningMethod) -> bool:
    """Whether `method` can run in another method's context (random's `match`, lottery's
    `criterion`): one shot on the caller's trained weights (not a pretraining of its own),
    without data (the caller gets none), a mask at any sparsity (the caller's), and valid with
    its own default options (it gets no others).
    """
    if (method.when != "trained" or method.produces != "mask" or method.needs_data
            or method.uses_sensitivity or method.fixed_sparsity is not None
            or method.pretrain is not None):
        return False
    try:
        method.resolve_options({})
    except ConfigError:
        return False
    return True


def reference_method(name: Any, key: str, caller: str) -> PruningMethod:
    """The method `name` if it can run inside method `caller`, else a ConfigError naming `key`
    and the methods that can (the registry is complete only once every module is imported,
    so this is a `validate` check rather than declared choices)."""
    allowed = [n for n in METHODS if n != caller and runs_inside_another(METHODS.get(n))]
    if name not in allowed:
        raise ConfigError(
            f"{key} must be one of {', '.join(allowed)} (a data-free method applied to trained "
            f"weights that returns a mask at any sparsity), got {name!r}")
    return METHODS.get(name)


def run_with_defaults(method: PruningMethod, ctx: PruneContext, sparsity: float) -> Mask:
    """`method` on `ctx` with its own default options, not those of the method calling it."""
    return method(dataclasses.replace(ctx, options=method.resolve_options({})), sparsity)


def check_options(opts: Mapping[str, Any], key: str) -> None:
    if opts["match"] is None:
        return
    if opts["distribution"] != "uniform":
        raise ConfigError(
            f"{key}.match and {key}.distribution exclude each other (match takes the per-layer "
            f"sparsities of its method), got distribution {opts['distribution']!r}")
    reference_method(opts["match"], f"{key}.match", "random")


@register_method("random", when="trained", validate=check_options, options={
    "distribution": choice(
        "uniform", ("global", *DISTRIBUTIONS),
        "how many weights each layer keeps; global ranks all layers together"),
    "match": Option(
        None, str, "copy the per-layer sparsities of this method (data-free, on trained "
        "weights, run with its default options); only which weights survive is random",
        nullable=True),
})
def random_pruning(ctx: PruneContext, sparsity: float) -> Mask:
    opts = METHODS.get("random").resolve_options(ctx.options)
    scores = random_scores(ctx)
    if opts["match"] is not None:
        reference = run_with_defaults(METHODS.get(opts["match"]), ctx, sparsity)
        layers = sparsity_report(reference)["per_layer"]
        return layerwise_topk_mask(
            scores, {n: v["weight_sparsity"] for n, v in layers.items()}, ctx.mask
        )
    if opts["distribution"] == "global":
        return global_topk_mask(scores, sparsity, ctx.mask)
    allocation = DISTRIBUTIONS[opts["distribution"]](ctx, sparsity)
    return layerwise_topk_mask(scores, allocation, ctx.mask)
