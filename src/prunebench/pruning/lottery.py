"""Lottery-ticket iterative magnitude pruning (Frankle & Carbin 2019; Frankle et al. 2020).

Each round prunes `prune_fraction` of the *remaining* weights with `criterion` (global
magnitude in the paper), rewinds the survivors to their values at iteration
`rewind_iteration` (0 = the original initialisation; k > 0 = late rewinding), and retrains.
`reinit_control` also trains the final mask from a fresh random initialisation, the control
that shows the initialisation matters. The loop itself is `Workspace.run_lottery`; this
function is one round's pruning step.
"""

from __future__ import annotations

from prunebench.errors import ConfigError
from prunebench.pruning.base import METHODS, PruneContext, register_method
from prunebench.pruning.mask import Mask


def check_options(opts) -> None:
    if not 0.0 < opts["prune_fraction"] < 1.0:
        raise ConfigError(
            f"methods.lottery.prune_fraction must be in (0, 1), got {opts['prune_fraction']!r}"
        )
    if not isinstance(opts["rewind_iteration"], int) or opts["rewind_iteration"] < 0:
        raise ConfigError("methods.lottery.rewind_iteration must be an integer >= 0")
    criterion = METHODS.get(opts["criterion"])
    if criterion.when != "trained" or criterion.needs_data:
        raise ConfigError(
            f"methods.lottery.criterion must be a data-free method applied to trained weights "
            f"(e.g. global_magnitude, layer_magnitude), got {opts['criterion']!r}"
        )
    if not isinstance(opts["reinit_control"], bool):
        raise ConfigError("methods.lottery.reinit_control must be true or false")


@register_method(
    "lottery", when="iterative", validate=check_options,
    prune_fraction=0.2, rewind_iteration=0, reinit_control=True, criterion="global_magnitude",
)
def lottery_round(ctx: PruneContext, sparsity: float) -> Mask:
    return METHODS.get(ctx.options["criterion"])(ctx, sparsity)
