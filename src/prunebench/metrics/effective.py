"""Effective sparsity (Vysogorets & Kempe 2021, "Connectivity Matters: Neural Network Pruning
Through the Lens of Effective Sparsity").

A nonzero weight is *effective* when it lies on a path from the input to the output. Pruning
at high sparsity disconnects units: a hidden unit with no nonzero outgoing weights makes its
incoming weights useless, and a unit none of whose inputs carries signal makes its outgoing
weights useless (a bias still gives it a constant output, which carries no information about
the input and could be folded into the next layer's bias). Direct sparsity counts those
weights as kept; effective sparsity does not, which is why it is the honest number at high
sparsity.

How it is computed here: one forward pass at batch 1 (eval mode) records, with hooks, the
order in which the conv/linear layers run and the autograd nodes of their inputs and outputs.
Two consecutive layers form a *link* when the second one's input is computed from the first
one's output alone, through per-channel operations only (activations, BatchNorm, pooling,
a mean over spatial dims, and a final flatten). Along links, "reached from the input" masks
propagate forward and "used by the output" masks propagate backward; a weight is effective if
it is nonzero, its input unit is reached and its output unit is used. Backward propagation
additionally needs the first layer's output to feed nothing but the link, else an unused
unit of the second layer may still be used elsewhere.

The approximation is conservative, never overstated: wherever the graph is not a plain chain
(residual additions, concatenations, tensors feeding two branches, permutes, grouped convs,
layers called more than once), the units at that boundary count as reached and used, so only
directly zero weights are dropped there. Inside residual networks, paths through the
shortcut are therefore not analysed.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

# Autograd nodes that act on each channel separately, so a channel that carries no signal
# (or is not used) stays so across them.
_PER_CHANNEL_NODES = frozenset({
    "ReluBackward0", "LeakyReluBackward0", "LeakyReluBackward1", "HardtanhBackward0",
    "GeluBackward0", "SiluBackward0", "SigmoidBackward0", "TanhBackward0", "EluBackward0",
    "HardswishBackward0", "HardsigmoidBackward0", "CloneBackward0",
    "NativeBatchNormBackward0", "CudnnBatchNormBackward0", "MiopenBatchNormBackward0",
    "MaxPool1DWithIndicesBackward0", "MaxPool2DWithIndicesBackward0",
    "MaxPool3DWithIndicesBackward0", "AvgPool2DBackward0", "AvgPool3DBackward0",
    "AdaptiveAvgPool2DBackward0", "AdaptiveAvgPool3DBackward0",
    "AdaptiveMaxPool2DBackward0", "AdaptiveMaxPool3DBackward0",
})
_VIEW_NODES = frozenset({"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0"})


@dataclass
class _Call:
    """One run of a conv/linear layer, seen by its hooks."""

    name: str
    module: nn.Module
    in_node: Any = None
    in_shape: tuple[int, ...] = ()
    out_node: Any = None
    out_shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Link:
    """The second layer's input unit j is the first layer's output unit j // block."""

    block: int
    sole_use: bool


def layer_weight_names(model: nn.Module) -> dict[str, str]:
    """Conv/linear module name -> its weight's parameter name."""
    return {name: f"{name}.weight" if name else "weight"
            for name, module in model.named_modules() if isinstance(module, LAYER_TYPES)}


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[list[_Call], list[Any]]:
    """Layer calls in forward order, and the autograd roots of the model's outputs."""
    calls: list[_Call] = []
    pending: dict[nn.Module, _Call] = {}

    def before(module, args):
        call = _Call(names[module], module)
        if args and isinstance(args[0], Tensor):
            call.in_node, call.in_shape = args[0].grad_fn, tuple(args[0].shape)
        pending[module] = call

    def after(module, args, output):
        call = pending.pop(module)
        if isinstance(output, Tensor):
            call.out_node, call.out_shape = output.grad_fn, tuple(output.shape)
        calls.append(call)

    names = {m: n for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
    handles = [h for m in names for h in (m.register_forward_pre_hook(before),
                                         m.register_forward_hook(after))]
    modes = {m: m.training for m in model.modules()}
    first = next(model.parameters())
    try:
        model.eval()
        # The autograd graph is the data-flow graph this analysis reads, even under a
        # caller's no_grad or inference_mode.
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.zeros(1, *input_shape, device=first.device, dtype=first.dtype,
                            requires_grad=True)
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    tensors = output if isinstance(output, (tuple, list)) else (output,)
    roots = [t.grad_fn for t in tensors if isinstance(t, Tensor) and t.grad_fn is not None]
    return calls, roots


def _consumer_counts(roots: list[Any]) -> Counter:
    """How many autograd edges read each node's output (edges into parameters included)."""
    counts: Counter = Counter()
    seen, stack = set(), list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                counts[child] += 1
                stack.append(child)
    return counts


def _data_inputs(node: Any) -> list[Any]:
    """The node's inputs other than parameters (leaves)."""
    return [child for child, _ in node.next_functions
            if child is not None and type(child).__name__ != "AccumulateGrad"]


def _keeps_channels(node: Any, first: bool, call: _Call, channels: int) -> bool:
    """Whether the node maps channel c to channel c only (the flatten only right before `call`)."""
    kind = type(node).__name__
    if kind in _PER_CHANNEL_NODES:
        return True
    if kind == "MeanBackward1":
        ndim = len(node._saved_self_sym_sizes)
        return all(d % ndim >= 2 for d in node._saved_dim)
    if kind in _VIEW_NODES and first:
        sizes = tuple(node._saved_self_sym_sizes)
        return (len(call.in_shape) == 2 and sizes[:2] == (call.in_shape[0], channels)
                and call.in_shape[1] == math.prod(sizes[1:]))
    return False


def _simple(call: _Call, counts: Counter[nn.Module]) -> bool:
    """A layer that runs once, ungrouped, with its output units on dim 1."""
    if counts[call.module] != 1 or call.out_node is None:
        return False
    if isinstance(call.module, nn.Linear):
        return len(call.out_shape) == 2
    return call.module.groups == 1


def _link(first: _Call, second: _Call, consumers: Counter) -> _Link | None:
    """The link from `first` to `second`, or None if `second` reads anything else."""
    channels = first.out_shape[1]
    node, path = second.in_node, []
    while node is not first.out_node:
        if node is None or not _keeps_channels(node, not path, second, channels):
            return None
        path.append(node)
        inputs = _data_inputs(node)
        if len(inputs) != 1:
            return None
        node = inputs[0]
    if isinstance(second.module, nn.Linear):
        if len(second.in_shape) != 2 or second.in_shape[1] % channels:
            return None
        block = second.in_shape[1] // channels
    elif second.in_shape[1] == channels:
        block = 1
    else:
        return None
    sole_use = all(consumers[n] == 1 for n in [first.out_node, *path])
    return _Link(block, sole_use)


def _links(calls: list[_Call], roots: list[Any]) -> list[_Link | None]:
    """links[i] joins calls[i] to calls[i + 1]."""
    runs = Counter(call.module for call in calls)
    consumers = _consumer_counts(roots)
    return [_link(a, b, consumers) if _simple(a, runs) and _simple(b, runs) else None
            for a, b in itertools.pairwise(calls)]


def _connectivity(weight: Tensor) -> Tensor:
    """(out, in) bool: whether any kernel position connects input unit to output unit."""
    nonzero = weight != 0
    return nonzero.flatten(2).any(2) if nonzero.dim() > 2 else nonzero


def _propagate(conns: list[Tensor], links: list[_Link | None]) -> list[tuple[Tensor, Tensor]]:
    """Per layer: (input units reached from the input, output units used by the output)."""
    reached_in: list[Tensor] = []
    for i, conn in enumerate(conns):
        link = links[i - 1] if i else None
        if link is None:
            reached_in.append(torch.ones(conn.shape[1], dtype=torch.bool, device=conn.device))
        else:
            reached_out = (conns[i - 1] & reached_in[i - 1]).any(1)
            reached_in.append(reached_out.repeat_interleave(link.block))
    used_out: list[Tensor] = []  # built from the last layer back
    for i in reversed(range(len(conns))):
        link = links[i] if i + 1 < len(conns) else None
        if link is None or not link.sole_use:
            used_out.append(torch.ones(conns[i].shape[0], dtype=torch.bool, device=conns[i].device))
        else:
            used_in = (conns[i + 1] & used_out[-1][:, None]).any(0)
            used_out.append(used_in.view(-1, link.block).any(1))
    used_out.reverse()
    return list(zip(reached_in, used_out))


@torch.no_grad()
def effective_weight_masks(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Tensor]:
    """Per conv/linear weight (by parameter name): True where it is nonzero and effective.

    The model's zero weights are its pruning (apply a mask first). Layers that never run keep
    their direct mask. The model is left as it was (hooks removed, train/eval modes restored).
    """
    calls, roots = _trace(model, input_shape)
    weight_names = layer_weight_names(model)
    masks = {weight_names[n]: m.weight != 0
             for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
    if not calls:
        return masks
    conns = [_connectivity(call.module.weight) for call in calls]
    links = _links(calls, roots)
    for call, (reached_in, used_out) in zip(calls, _propagate(conns, links)):
        kernel = (1,) * (call.module.weight.dim() - 2)
        alive = used_out.view(-1, 1, *kernel) & reached_in.view(1, -1, *kernel)
        masks[weight_names[call.name]] &= alive
    return masks


def effective_counts(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int | float]:
    """Direct and effective nonzero counts of the conv/linear weights, and the sparsities.

    `params_effective_nonzero` is all nonzero parameters minus the nonzero conv/linear weights
    that are not effective; biases and norm parameters count as they are.
    """
    effective = effective_weight_masks(model, input_shape)
    params = dict(model.named_parameters())
    weights_total = sum(params[n].numel() for n in effective)
    weights_nonzero = sum(int(torch.count_nonzero(params[n])) for n in effective)
    weights_effective = sum(int(m.sum()) for m in effective.values())
    params_nonzero = sum(int(torch.count_nonzero(p)) for p in params.values())
    return {
        "weights_total": weights_total,
        "weights_nonzero": weights_nonzero,
        "weights_effective_nonzero": weights_effective,
        "params_effective_nonzero": params_nonzero - (weights_nonzero - weights_effective),
        "weight_sparsity": 1.0 - weights_nonzero / weights_total if weights_total else 0.0,
        "weight_sparsity_effective":
            1.0 - weights_effective / weights_total if weights_total else 0.0,
    }
