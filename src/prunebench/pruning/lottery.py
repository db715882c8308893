"""Lottery-ticket iterative magnitude pruning (Frankle & Carbin 2019; Frankle et al. 2020).

Each round prunes `prune_fraction` of the *remaining* weights with `criterion` (global
magnitude), rewinds the survivors to their values at iteration `rewind_iteration` (0 = the
original initialisation; k > 0 = late rewinding), and retrains. With
`output_prune_fraction` set, each layer is pruned by magnitude at its own rate instead, as
in the paper's LeNet experiments: `prune_fraction` of every layer's remaining weights per
round, `output_prune_fraction` of the output layer's; after r rounds a layer keeps
(1 - rate)^r of its weights, and the levels are the rounds whose overall sparsity reaches
the study's targets.
`reinit_control` also trains the final mask from a fresh random initialisation, the control
that shows the initialisation matters. The method function is one round's pruning step; its
`iterative` hooks (the level schedule, the rewind point, the control) are what the lottery
stage reads, so the stage never reads these options itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from prunebench.errors import ConfigError
from prunebench.options import Option, fraction
from prunebench.pruning.base import METHODS, Iterative, PruneContext, register_method
from prunebench.pruning.magnitude import magnitude_scores
from prunebench.pruning.mask import Mask, layerwise_topk_mask
from prunebench.pruning.random_pruning import reference_method, run_with_defaults
from prunebench.pruning.scope import PRUNABLE_TYPES, Scope

DEFAULT_CRITERION = "global_magnitude"


def check_options(opts: Mapping[str, Any], key: str) -> None:
    reference_method(opts["criterion"], f"{key}.criterion", "lottery")
    if opts["output_prune_fraction"] is not None and opts["criterion"] != DEFAULT_CRITERION:
        raise ConfigError(f"{key}.criterion: per-layer rates (output_prune_fraction) prune "
                          f"each layer by magnitude; leave criterion at {DEFAULT_CRITERION!r}, "
                          f"got {opts['criterion']!r}")


def layer_rates(model: nn.Module, scope: Scope, opts: Mapping[str, Any]) -> dict[str, float]:
    """Each prunable weight's fraction pruned per round: `output_prune_fraction` for the
    model's last layer (when in scope), `prune_fraction` for the others."""
    names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    output = f"{names[-1]}.weight" if names else None
    return {name: opts["output_prune_fraction"] if name == output else opts["prune_fraction"]
            for name in scope.params(model)}


def round_sparsities(model: nn.Module, scope: Scope, opts: Mapping[str, Any],
                     target: float) -> list[float]:
    """Overall weight sparsity after rounds 1, 2, ... of per-layer pruning, up to the first
    round that reaches `target` (within 5e-4: targets are written rounded, 51.3 % remaining
    for 0.4872)."""
    params = scope.params(model)
    rates = layer_rates(model, scope, opts)
    total = sum(p.numel() for p in params.values())
    levels: list[float] = []
    while not levels or levels[-1] < target - 5e-4:
        r = len(levels) + 1
        pruned = sum(p.numel() * (1.0 - (1.0 - rates[n]) ** r) for n, p in params.items())
        levels.append(pruned / total)
    return levels


def lottery_schedule(prune_fraction: float, target: float) -> list[float]:
    """Sparsity after each round: prune `prune_fraction` of the remaining weights per round
    (Frankle & Carbin), and land exactly on `target` in the last round.

    A last round that would prune less than half a round's fraction of what remains (0.79 ->
    0.80 at prune_fraction 0.2) costs a whole retraining for a sliver: the round before it is
    dropped instead, so the last round prunes between 1/2 and 3/2 of a round's fraction."""
    if target <= 0:
        return []
    levels, density = [], 1.0
    while True:
        density *= 1.0 - prune_fraction
        if 1.0 - density >= target - 1e-9:
            break
        levels.append(1.0 - density)
    if levels and (1.0 - target) / (1.0 - levels[-1]) > 1.0 - prune_fraction / 2:
        levels.pop()
    return [*levels, target]


def level_schedule(opts: Mapping[str, Any], build_model: Callable[[], nn.Module], scope: Scope,
                   target: float) -> list[float]:
    """The `levels` hook: the sparsity of every level of a chain to `target`, by
    `prune_fraction` of all remaining weights per round, or, with per-layer rates
    (`output_prune_fraction`), the rounds of the study's architecture up to the first that
    reaches `target`."""
    if opts["output_prune_fraction"] is None:
        return lottery_schedule(opts["prune_fraction"], target)
    if target <= 0:
        return []
    return round_sparsities(build_model(), scope, opts, target)


ITERATIVE = Iterative(
    levels=level_schedule,
    rewind_iteration=lambda opts: opts["rewind_iteration"],
    reinit_control=lambda opts: opts["reinit_control"],
)


@register_method("lottery", when="iterative", validate=check_options, iterative=ITERATIVE, options={
    "prune_fraction": fraction(
        0.2, "fraction of the remaining weights each round prunes", open_low=True),
    "rewind_iteration": Option(
        0, int, "iteration whose weights the survivors rewind to (0 = initialisation)", low=0),
    "reinit_control": Option(
        True, bool, "also train the final mask from a fresh random initialisation"),
    "criterion": Option(
        DEFAULT_CRITERION, str,
        "method that prunes each round (data-free, on trained weights, its default options)"),
    "output_prune_fraction": Option(
        None, float, "prune every layer by magnitude at its own rate per round: this fraction "
        "of the output layer's remaining weights, prune_fraction of the others' (Frankle & "
        "Carbin's LeNet: 0.1 and 0.2); null: criterion prunes prune_fraction of all weights",
        low=0.0, high=1.0, low_open=True, high_open=True, nullable=True),
})
def lottery_round(ctx: PruneContext, sparsity: float) -> Mask:
    opts = METHODS.get("lottery").resolve_options(ctx.options)
    if opts["output_prune_fraction"] is None:
        return run_with_defaults(METHODS.get(opts["criterion"]), ctx, sparsity)
    # Per-layer rates: the round whose overall sparsity `sparsity` is (the stage asks for
    # the levels `round_sparsities` lists), then each layer at its own compounded rate.
    levels = round_sparsities(ctx.model, ctx.scope, opts, sparsity)
    rounds = min(range(len(levels)), key=lambda i: abs(levels[i] - sparsity)) + 1
    rates = layer_rates(ctx.model, ctx.scope, opts)
    per_layer = {name: 1.0 - (1.0 - rate) ** rounds for name, rate in rates.items()}
    return layerwise_topk_mask(magnitude_scores(ctx), per_layer, ctx.mask)
