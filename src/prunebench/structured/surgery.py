"""Channel surgery: physically remove channel groups, replay recorded removals, or zero them.

An edit is a JSON-able record `{"layer": <group root>, "pruned": [sorted indices]}` whose
indices refer to the group's channels as they were when the edit ran. A list of edits is
all a saved structured run needs to rebuild its shapes from a fresh registry model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prunebench.structured.graph import ChannelGraph

Edit = dict


def prune_channels(
    model: nn.Module, input_shape: tuple[int, int, int], pruned: Mapping[str, Sequence[int]]
) -> list[Edit]:
    """Remove the given channels of each named group in place; returns the edits applied.

    Groups are disjoint, so every index refers to the model as passed in, whatever the order.
    Groups are pruned in forward order to make the edit list independent of the mapping's
    order; groups with nothing to prune produce no edit. Raises ValueError, before any change,
    for an unknown root, out-of-range or repeated indices, or a group it would empty.
    """
    graph = ChannelGraph(model, input_shape)
    return [graph.prune(root, indices) for root, indices in _requests(graph, pruned) if indices]


def replay(model: nn.Module, input_shape: tuple[int, int, int], edits: Sequence[Edit]) -> nn.Module:
    """Apply recorded edits, in order, to `model` (a fresh registry build); returns it.

    Afterwards its shapes equal those of the model the edits were recorded on, so that
    model's saved state_dict loads into it.
    """
    graph = ChannelGraph(model, input_shape)
    for edit in edits:
        graph.prune(edit["layer"], list(edit["pruned"]))
    return model


def zero_channels(
    model: nn.Module, input_shape: tuple[int, int, int], pruned: Mapping[str, Sequence[int]]
) -> None:
    """Make the given channels output exactly zero, keeping every shape.

    Zeroing the producers' rows and biases is not enough where a BatchNorm follows: it would
    still emit its bias minus the normalised running mean. Zeroing the BN's weight and bias as
    well makes its output 0 whatever its input, so each channel of the group (including the
    sum of a residual add) is 0 and its consumers see exactly what surgery would leave them.
    A BatchNorm without affine parameters cannot be silenced this way, so it is refused.
    """
    graph = ChannelGraph(model, input_shape)
    for root, indices in _requests(graph, pruned, allow_all=True):
        group = graph.group(root)
        if any(graph.modules[name].weight is None for name in group.norms):
            raise ValueError(f"group {root!r} has a BatchNorm without affine weight and bias")
        rows = torch.as_tensor(indices, dtype=torch.long)
        with torch.no_grad():
            for name in group.producers + group.norms:
                layer = graph.modules[name]
                for parameter in (layer.weight, layer.bias):
                    if parameter is not None:
                        parameter[rows.to(parameter.device)] = 0


def _requests(
    graph: ChannelGraph, pruned: Mapping[str, Sequence[int]], *, allow_all: bool = False
) -> list[tuple[str, list[int]]]:
    """Checked (root, sorted indices) pairs in forward order; raises before any change."""
    checked = {
        root: graph.check(root, indices, allow_all=allow_all) for root, indices in pruned.items()
    }
    return [(root, checked[root]) for root in graph.roots if root in checked]
