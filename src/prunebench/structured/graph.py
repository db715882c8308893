"""Channel groups of a model, found with Torch-Pruning's DependencyGraph.

A *channel group* is a set of channels that must be removed together: the out-channels of
one conv/linear (its *producer*), the BatchNorm channels that normalise them and the
in-channels of every layer that reads them (its *consumers*). A residual add couples the
out-channels of several producers into one group. Torch-Pruning traces the model once with
autograd and follows these couplings (including flatten -> linear, where one channel owns a
block of linear inputs), so no layer shapes are edited by hand here.

A group is named by its *root*: the `named_modules()` name of its first producer in forward
order. Names survive pruning (modules are edited in place), so edits recorded against one
model replay on a freshly built copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn

PRODUCER_TYPES = (nn.Conv2d, nn.Linear)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


def example_input(input_shape: tuple[int, int, int], device=None) -> Tensor:
    """One all-zero image: tracing needs the shapes only, never the values."""
    return torch.zeros(1, *input_shape, device=device)


def count_channels(model: nn.Module) -> dict[str, int]:
    """Out-channels (conv) or out-features (linear) of every conv/linear, by module name."""
    return {
        name: out_channels(module)
        for name, module in model.named_modules()
        if isinstance(module, PRODUCER_TYPES)
    }


def out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a group's channels.

    `input_channel[f]` is the group channel behind the layer's input feature f: the identity
    for a conv, and `f // (H * W)` for a linear behind a flatten of C x H x W maps.
    """

    name: str
    input_channel: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """One group: `size` channels, produced by `producers` (forward order, root first),
    normalised by `norms` and read by `consumers`."""

    root: str
    size: int
    producers: tuple[str, ...]
    norms: tuple[str, ...]
    consumers: tuple[Consumer, ...]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (BN must not update its running stats while we trace or sample),
    then give every module back the train/eval mode it had."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.train(training)


def forward_order(model: nn.Module, inputs: Tensor) -> list[str]:
    """Names of the conv/linear layers in the order a forward pass first calls them."""
    names = {module: name for name, module in model.named_modules()}
    order: list[str] = []

    def record(module: nn.Module, _inputs, _output) -> None:
        if names[module] not in order:
            order.append(names[module])

    hooks = [
        m.register_forward_hook(record) for m in model.modules() if isinstance(m, PRODUCER_TYPES)
    ]
    try:
        with torch.no_grad(), eval_mode(model):
            model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return order


def model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class ChannelGraph:
    """A model's DependencyGraph plus its channel groups named by root module.

    The graph stays valid while its groups are pruned (Torch-Pruning edits modules in place),
    so one graph serves a whole sequence of edits.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int]):
        inputs = example_input(tuple(input_shape), model_device(model))
        self.model = model
        self.modules = dict(model.named_modules())
        self.names = {module: name for name, module in self.modules.items()}
        self.order = forward_order(model, inputs)
        linears = [name for name in self.order if isinstance(self.modules[name], nn.Linear)]
        if not linears:
            raise ValueError(f"{type(model).__name__} has no Linear classifier to keep")
        self.classifier = linears[-1]
        # Tracing needs autograd and switches the model to eval; both are undone afterwards.
        with torch.enable_grad(), eval_mode(model):
            self.dependency = tp.DependencyGraph().build_dependency(model, inputs)
        self.roots = self._find_roots()

    def _torch_group(self, root: str, indices: list[int]):
        module = self.modules[root]
        pruner = self.dependency.get_pruner_of_module(module)
        return self.dependency.get_pruning_group(module, pruner.prune_out_channels, indices)

    def _find_roots(self) -> list[str]:
        """First producer of every group in forward order, classifier group excluded.

        Walking the layers in forward order and skipping producers already seen makes the
        first unseen producer of each group its root.
        """
        seen: set[str] = set()
        roots = []
        for name in self.order:
            if name in seen:
                continue
            producers = self.group(name).producers
            seen.update(producers)
            if self.classifier not in producers:
                roots.append(name)
        return roots

    def group(self, root: str) -> ChannelGroup:
        """The current members of the group whose out-channels `root` produces."""
        size = out_channels(self.modules[root])
        torch_group = self._torch_group(root, list(range(size)))
        producers, norms, consumers = [], [], []
        for item in torch_group:
            module = item.dep.target.module
            name = self.names.get(module)
            if isinstance(module, PRODUCER_TYPES):
                if self.dependency.is_out_channel_pruning_fn(item.dep.handler):
                    producers.append(name)
                else:
                    paired = sorted(zip(item.idxs, item.root_idxs))
                    consumers.append(Consumer(name, tuple(channel for _, channel in paired)))
            elif isinstance(module, NORM_TYPES):
                norms.append(name)
            elif isinstance(module, nn.Parameter) or any(True for _ in module.parameters()):
                raise ValueError(
                    f"channel group {root!r} reaches {type(module).__name__} {name!r}, whose "
                    f"parameters this package cannot score or zero"
                )
        position = {name: index for index, name in enumerate(self.order)}
        producers.sort(key=position.__getitem__)
        return ChannelGroup(root, size, tuple(producers), tuple(norms), tuple(consumers))

    def groups(self, *, exclude_first: bool = False) -> list[ChannelGroup]:
        """Prunable groups in forward order; `exclude_first` drops the first layer's group."""
        groups = [self.group(root) for root in self.roots]
        if exclude_first:
            groups = [g for g in groups if self.order[0] not in g.producers]
        return groups

    def check(self, root: str, indices, *, allow_all: bool = False) -> list[int]:
        """`indices` as a sorted list, after checking `root` names a group and each index one
        of its channels, once. Unless `allow_all`, refuses to take every channel."""
        self.check_root(root)
        size = out_channels(self.modules[root])
        pruned = sorted(int(i) for i in indices)
        if len(set(pruned)) != len(pruned):
            raise ValueError(f"group {root!r}: repeated channel indices in {pruned}")
        if pruned and not 0 <= pruned[0] <= pruned[-1] < size:
            raise ValueError(f"group {root!r} has {size} channels; indices {pruned} out of range")
        if len(pruned) == size and not allow_all:
            raise ValueError(
                f"refusing to prune all {size} channels of group {root!r}: an empty layer "
                f"would cut the network in two"
            )
        return pruned

    def prune(self, root: str, indices) -> dict:
        """Remove channels `indices` of group `root` from every member; returns the edit."""
        pruned = self.check(root, indices)
        if pruned:
            self._torch_group(root, pruned).prune()
        return {"layer": root, "pruned": pruned}

    def check_root(self, root: str) -> None:
        """Raise a ValueError saying what `root` is instead, unless it names a group root."""
        if root in self.roots:
            return
        if root == self.classifier:
            raise ValueError(f"{root!r} is the classifier; its outputs (the classes) are kept")
        owner = next((r for r in self.roots if root in self.group(r).producers), None)
        if owner is not None:
            raise ValueError(
                f"{root!r} is not a group root: its channels belong to group {owner!r}"
            )
        raise ValueError(f"no prunable channel group is rooted at {root!r}; roots: {self.roots}")


def channel_groups(
    model: nn.Module, input_shape: tuple[int, int, int], *, exclude_first: bool = False
) -> dict[str, int]:
    """Prunable groups in forward order: root module name -> current channel count."""
    graph = ChannelGraph(model, input_shape)
    return {group.root: group.size for group in graph.groups(exclude_first=exclude_first)}
