"""Structured methods: whole channels (conv filters, linear neurons) are removed.

Each method is `(ctx, channel_sparsity) -> edits`: it decides which channels go, removes them
from `ctx.model` in place with Torch-Pruning's dependency graph (`prunebench.structured`),
and returns the edits so the run's architecture can be rebuilt. `channel_sparsity` is the
fraction of the prunable channels removed (the classifier's outputs and the input image's
channels never are); what that achieves in parameters and MACs is measured on the saved
model (`param_reduction`, `macs_reduction`): 50 % of a conv net's channels carry about 75 %
of its weights.

- `l1_filter` (Li et al. 2017, "Pruning Filters for Efficient ConvNets"): the filters with
  the smallest L1 norm, per layer or with one threshold across layers; `rounds > 1` prunes
  iteratively with fine-tuning in between (the prune stage runs the rounds).
- `neuron_magnitude`: the same criterion for MLPs, units ranked by the L2 norm of their
  incoming weights.
- `slimming` (Liu et al. 2017, "Learning Efficient Convolutional Networks through Network
  Slimming"): its own dense training with an L1 penalty `penalty` on every BatchNorm scale
  (`pretrain`), then one global threshold on |gamma|.
- `regression` (He et al. 2017, "Channel Pruning for Accelerating Very Deep Neural
  Networks"): per layer, LASSO channel selection on sampled feature maps and least-squares
  reconstruction of the next layer's weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from prunebench.errors import ConfigError
from prunebench.options import Option, choice, positive_int
from prunebench.pruning.base import PruneContext, register_method

ROUND_OPTIONS = {
    "rounds": positive_int(1, "prune in this many steps, each removing the same fraction of "
                              "the remaining channels"),
    "round_epochs": positive_int(1, "fine-tuning epochs between rounds (finetune recipe)"),
}
ALLOCATIONS = ("layer", "global")


def _rounds(options: Mapping[str, Any]) -> tuple[int, int]:
    """The `rounds` hook: Li et al.'s iterative pruning, `rounds` steps with `round_epochs` of
    fine-tuning between them."""
    return options["rounds"], options["round_epochs"]


def _input_shape(ctx: PruneContext) -> tuple[int, ...]:
    if ctx.input_shape is None:
        raise ValueError("structured pruning needs ctx.input_shape (one example's shape)")
    return tuple(ctx.input_shape)


def _prune_lowest(ctx: PruneContext, scores: Mapping[str, Any], channel_sparsity: float,
                  allocation: str) -> list[dict]:
    from prunebench.structured import allocate, prune_channels

    pruned = allocate(scores, channel_sparsity, allocation)
    return prune_channels(ctx.model, _input_shape(ctx), pruned)


@register_method("l1_filter", when="trained", produces="channels", rounds=_rounds, options={
    "allocation": choice("layer", ALLOCATIONS, "layer: the same fraction of every layer "
                         "(Li et al.); global: one threshold on per-layer-normalised norms"),
    "norm": Option(1, int, "p of the filter norm", choices=(1, 2)),
    **ROUND_OPTIONS,
})
def l1_filter(ctx: PruneContext, channel_sparsity: float) -> list[dict]:
    """Remove the filters (output channels) of smallest L1 norm."""
    from prunebench.structured import filter_norm_scores

    o = ctx.options
    scores = filter_norm_scores(ctx.model, _input_shape(ctx), p=o["norm"],
                                exclude_first=ctx.scope.exclude_first)
    return _prune_lowest(ctx, scores, channel_sparsity, o["allocation"])


@register_method("neuron_magnitude", when="trained", produces="channels", rounds=_rounds,
                 options={
    "allocation": choice("layer", ALLOCATIONS, "layer or global (as for l1_filter)"),
    **ROUND_OPTIONS,
})
def neuron_magnitude(ctx: PruneContext, channel_sparsity: float) -> list[dict]:
    """Remove the hidden units whose incoming weights have the smallest L2 norm."""
    from prunebench.structured import filter_norm_scores

    scores = filter_norm_scores(ctx.model, _input_shape(ctx), p=2,
                                exclude_first=ctx.scope.exclude_first)
    return _prune_lowest(ctx, scores, channel_sparsity, ctx.options["allocation"])


def _slimming_pretrain(options: Mapping[str, Any]) -> dict[str, Any]:
    return {"bn_l1": options["penalty"]}


def _needs_batch_norm(model, input_shape, options) -> str | None:
    norms = (nn.BatchNorm1d, nn.BatchNorm2d)
    if not any(isinstance(m, norms) for m in model.modules()):
        return "network slimming ranks channels by their BatchNorm scales, and it has none"
    return None


@register_method("slimming", when="trained", produces="channels", pretrain=_slimming_pretrain,
                 rounds=_rounds, check_model=_needs_batch_norm, options={
                     "penalty": Option(1e-4, float, "lambda: L1 penalty on BatchNorm scales "
                                       "during the method's own dense training", low=0.0,
                                       low_open=True),
                     **ROUND_OPTIONS,
                 })
def slimming(ctx: PruneContext, channel_sparsity: float) -> list[dict]:
    """Remove the channels whose BatchNorm scale |gamma| is smallest, one global threshold."""
    from prunebench.structured import allocate, bn_scale_scores, prune_channels

    try:
        scores = bn_scale_scores(ctx.model, _input_shape(ctx),
                                 exclude_first=ctx.scope.exclude_first)
    except ValueError as err:
        raise ConfigError(f"method slimming (key model.name): {err}") from None
    pruned = allocate(scores, channel_sparsity, "global", normalise=False)
    return prune_channels(ctx.model, _input_shape(ctx), pruned)


@register_method("regression", when="trained", produces="channels", needs_data=True, options={
    "positions_per_sample": positive_int(10, "output positions sampled per image"),
    "max_samples": positive_int(2000, "calibration images used (from the calibration batches)"),
})
def regression(ctx: PruneContext, channel_sparsity: float) -> list[dict]:
    """LASSO channel selection and least-squares reconstruction, layer by layer."""
    from prunebench.structured import regression_prune

    o = ctx.options
    return regression_prune(ctx.model, _input_shape(ctx), ctx.require_batches("regression")(),
                            channel_sparsity, positions_per_sample=o["positions_per_sample"],
                            max_samples=o["max_samples"], exclude_first=ctx.scope.exclude_first,
                            generator=ctx.generator)
