"""Structured (channel / neuron) pruning that physically removes channels.

Channel groups come from Torch-Pruning's DependencyGraph (`graph`); `surgery` removes, replays
or zeroes them; `scores` and `allocation` decide which channels go; `regression` is the
LASSO + least-squares channel pruning of He et al. 2017.
"""

from prunebench.structured.allocation import allocate
from prunebench.structured.graph import channel_groups, count_channels, example_input
from prunebench.structured.regression import regression_prune
from prunebench.structured.scores import bn_scale_scores, filter_norm_scores
from prunebench.structured.surgery import Edit, prune_channels, replay, zero_channels

__all__ = [
    "Edit",
    "allocate",
    "bn_scale_scores",
    "channel_groups",
    "count_channels",
    "example_input",
    "filter_norm_scores",
    "prune_channels",
    "regression_prune",
    "replay",
    "zero_channels",
]
