"""Wanda (Sun et al. 2023): prune by weight magnitude times input activation norm.

The score of W_ij is |W_ij| * ||X_j||_2, where X_j is input feature j of the layer over all
calibration samples (and, for a Linear layer applied to sequences, all tokens). For Conv2d
the input features are the entries of the unfolded patches (in_channels x kh x kw, the
layout of `weight.view(out, -1)`) over every spatial position. Weights compete only within
their output row (output neuron / output channel): every row of every layer keeps the same
number of weights, so Wanda is per-output uniform by design and the layer sparsity equals
the target sparsity in every layer.

Layers are pruned one at a time in forward-execution order on a masked working copy, each
seeing the activations of the already-pruned earlier layers: for each layer the first
`batches` calibration batches are run through the copy with a hook on that layer, its mask
is chosen and applied to the copy, then the next layer follows. The copy is in eval mode,
as the pruned network will be used (BatchNorm running statistics, no dropout). Pruned
weights stay pruned: with a current mask the row target counts all weights of the row and
already-pruned weights score -inf; a row that is already sparser than the target keeps its
current mask.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunebench.errors import ConfigError
from prunebench.options import positive_int
from prunebench.pruning.base import METHODS, PruneContext, register_method
from prunebench.pruning.mask import Mask, apply_mask, keep_count


def rowwise_keep(scores: Tensor, n_keep: int) -> Tensor:
    """Bool mask keeping the n_keep highest scores of each row of a 2-D tensor.

    Ties are broken by position, as in the global top-k helpers.
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep.scatter_(1, order[:, :n_keep], True)
    return keep


def input_features(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's input as rows of features (samples x positions, in_features or C*kh*kw).

    Conv2d must have groups=1; padding (any mode, "same" included) is applied as the layer
    applies it, so border patches hold the same values the convolution sees.
    """
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, layer.in_features)
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            pads = (0, 0, 0, 0)
        else:  # "same": dilation * (k - 1) per dimension, an odd pixel at the bottom/right
            th, tw = (d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size))
            pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        ph, pw = layer.padding
        pads = (pw, pw, ph, ph)
    if any(pads):
        if layer.padding_mode == "zeros":
            x = F.pad(x, pads)
        else:
            x = F.pad(x, pads, mode=layer.padding_mode)
    patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, stride=layer.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def feature_square_sums(layer: nn.Module, x: Tensor) -> Tensor:
    """Sum over samples and positions of each input feature squared.

    For Conv2d, squaring and summing over samples commute with padding and unfolding, so one
    summed image is unfolded instead of the whole batch (memory of one sample, not N).
    """
    x = x.double().pow(2)
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, layer.in_features).sum(0)
    return input_features(layer, x.sum(0, keepdim=True)).sum(0)


def input_norms(
    model: nn.Module, layer: nn.Module, batches: list[tuple[Tensor, Tensor]]
) -> Tensor:
    """||X_j||_2 for every input feature j of `layer`, over all batches (float64)."""
    device = layer.weight.device
    squares = torch.zeros(layer.weight[0].numel(), dtype=torch.float64, device=device)

    def hook(module, args, output):
        squares.add_(feature_square_sums(module, args[0].detach()))

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x.to(device))
    finally:
        handle.remove()
    return squares.sqrt()


def execution_order(model: nn.Module, layers: dict[str, nn.Module], x: Tensor) -> list[str]:
    """Names of `layers` in the order a forward pass first calls them (unreached ones last)."""
    order: list[str] = []

    def record(name: str):
        def hook(module, args, output):
            if name not in order:
                order.append(name)

        return hook

    handles = [layer.register_forward_hook(record(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order + [n for n in layers if n not in order]


@register_method("wanda", when="trained", needs_data=True, options={
    "batches": positive_int(4, "calibration batches the input activation norms are taken over"),
})
def wanda(ctx: PruneContext, sparsity: float) -> Mask:
    """Per-output-row pruning by |W| * input activation norm, layer after layer."""
    options = METHODS.get("wanda").resolve_options(ctx.options)
    n_batches = options["batches"]
    batches = list(itertools.islice(ctx.require_batches("wanda")(), n_batches))
    if len(batches) < n_batches:
        raise ConfigError(
            f"methods.wanda.batches is {n_batches} but the calibration data has only "
            f"{len(batches)} batches"
        )

    model = copy.deepcopy(ctx.model).eval()
    layers = {
        f"{name}.weight" if name else "weight": layer
        for name, layer in ctx.scope.layers(model).items()
    }
    for name, layer in layers.items():
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise ConfigError(
                f"method 'wanda' supports Conv2d with groups=1 only; {name} has "
                f"groups={layer.groups} (exclude it from the scope or use another method)"
            )
    device = next(iter(layers.values())).weight.device
    if ctx.mask is not None:
        apply_mask(model, ctx.mask)

    mask: Mask = {}
    for name in execution_order(model, layers, batches[0][0].to(device)):
        layer = layers[name]
        weight = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        scores = weight.abs().double() * input_norms(model, layer, batches)
        current = None if ctx.mask is None else ctx.mask[name].to(device).reshape_as(weight)
        if current is not None:
            scores[~current] = -torch.inf
        keep = rowwise_keep(scores, keep_count(weight.shape[1], sparsity))
        if current is not None:
            keep &= current
        mask[name] = keep.view_as(layer.weight)
        apply_mask(model, {name: mask[name]})
    return {name: mask[name] for name in layers}
