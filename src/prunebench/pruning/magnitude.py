"""Magnitude pruning (Han et al. 2015): remove the weights of smallest absolute value."""

from __future__ import annotations

from prunebench.pruning.base import PruneContext, register_method
from prunebench.pruning.mask import Mask, global_topk_mask, layerwise_topk_mask


def magnitude_scores(ctx: PruneContext) -> dict:
    return {name: p.detach().abs() for name, p in ctx.params.items()}


@register_method("global_magnitude", when="trained")
def global_magnitude(ctx: PruneContext, sparsity: float) -> Mask:
    """One threshold across all prunable layers: layers with small weights lose more."""
    return global_topk_mask(magnitude_scores(ctx), sparsity, ctx.mask)


@register_method("layer_magnitude", when="trained")
def layer_magnitude(ctx: PruneContext, sparsity: float) -> Mask:
    """The same sparsity in every prunable layer."""
    return layerwise_topk_mask(magnitude_scores(ctx), sparsity, ctx.mask)
