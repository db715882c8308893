"""Lottery-ticket iterative magnitude pruning (Frankle & Carbin 2019; Frankle et al. 2020).

Each round prunes `prune_fraction` of the *remaining* weights with `criterion` (global
magnitude in the paper), rewinds the survivors to their values at iteration
`rewind_iteration` (0 = the original initialisation; k > 0 = late rewinding), and retrains.
`reinit_control` also trains the final mask from a fresh random initialisation, the control
that shows the initialisation matters. The loop itself is `Workspace.run_lottery`; this
function is one round's pruning step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prunebench.options import Option, fraction
from prunebench.pruning.base import METHODS, PruneContext, register_method
from prunebench.pruning.mask import Mask
from prunebench.pruning.random_pruning import reference_method, run_with_defaults


def check_options(opts: Mapping[str, Any], key: str) -> None:
    reference_method(opts["criterion"], f"{key}.criterion", "lottery")


@register_method("lottery", when="iterative", validate=check_options, options={
    "prune_fraction": fraction(
        0.2, "fraction of the remaining weights each round prunes", open_low=True),
    "rewind_iteration": Option(
        0, int, "iteration whose weights the survivors rewind to (0 = initialisation)", low=0),
    "reinit_control": Option(
        True, bool, "also train the final mask from a fresh random initialisation"),
    "criterion": Option(
        "global_magnitude", str,
        "method that prunes each round (data-free, on trained weights, its default options)"),
})
def lottery_round(ctx: PruneContext, sparsity: float) -> Mask:
    criterion = METHODS.get(METHODS.get("lottery").resolve_options(ctx.options)["criterion"])
    return run_with_defaults(criterion, ctx, sparsity)
