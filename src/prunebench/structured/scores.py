"""Channel importance scores, one tensor per channel group (root name -> scores by channel).

Both scores sum over every member of a coupled (residual) group: removing a channel of such
a group removes it from all its producers at once, so all of them count towards its worth.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunebench.structured.graph import ChannelGraph


def filter_norm_scores(
    model: nn.Module, input_shape: tuple[int, int, int], *, p: int = 1, exclude_first: bool = False
) -> dict[str, Tensor]:
    """Li et al. 2017, "Pruning Filters for Efficient ConvNets": the L1 norm (p=1) of each
    producing filter, i.e. sum |W| over its in-channels and kernel; p=2 gives the L2 norm.

    For a linear producer the filter is its weight row, so the score is the neuron's incoming
    weight magnitude. Biases are left out, as in the paper.
    """
    graph = ChannelGraph(model, input_shape)
    return {
        group.root: sum(_row_norms(graph.modules[name].weight, p) for name in group.producers)
        for group in graph.groups(exclude_first=exclude_first)
    }


def bn_scale_scores(
    model: nn.Module, input_shape: tuple[int, int, int], *, exclude_first: bool = False
) -> dict[str, Tensor]:
    """Liu et al. 2017, "Learning Efficient Convolutional Networks through Network Slimming":
    |gamma| of each channel's BatchNorm, summed over the group's BatchNorms.

    Only groups followed by a BatchNorm have a scale to rank by; the others (a hidden linear
    layer of the classifier, say) are left alone, as in the paper, which prunes the
    convolutional channels. Raises ValueError if no group has a BatchNorm.
    """
    graph = ChannelGraph(model, input_shape)
    groups = [g for g in graph.groups(exclude_first=exclude_first) if g.norms]
    if not groups:
        raise ValueError(
            f"network slimming ranks channels by BatchNorm scale, but model "
            f"{type(model).__name__} has no BatchNorm after any prunable channel group"
        )
    return {
        group.root: sum(graph.modules[name].weight.detach().abs().cpu() for name in group.norms)
        for group in groups
    }


def _row_norms(weight: Tensor, p: int) -> Tensor:
    """The p-norm of each output row (filter) of a conv or linear weight."""
    return torch.linalg.vector_norm(weight.detach().flatten(1), ord=p, dim=1).cpu()
