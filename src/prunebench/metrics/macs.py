"""Multiply-accumulates of one forward pass at batch 1: dense, cross-checked, and effective.

`macs_dense` comes from ultralytics-thop, the counter most pruning papers report with, with
BatchNorm counted as zero: at inference it folds into the preceding conv, and the field's MAC
figures (e.g. 313 M for VGG-16 on CIFAR-10) leave it out, as `size.count_macs` does. thop's
default would add 2 ops per BatchNorm element: +0.35 % on VGG-16-BN, +2 % on ResNet-20.
`macs_flopcounter` comes from torch's `FlopCounterMode` (halved, see `size.count_macs`) as an
independent check of the conv/linear arithmetic. The conventions still differ slightly: thop
counts average pooling (one add per input, one divide per output), other norms (LayerNorm,
GroupNorm) and some activations (e.g. Softmax); FlopCounterMode counts only matmuls,
convolutions and attention. Neither counts bias additions or ReLU. `macs_agree` says whether
they agree within 1 %.

`macs_effective` is `macs_dense` with every conv/linear layer's MACs replaced by the MACs of
its nonzero weights (nonzero weights x output positions): what an ideal sparse kernel would
execute. Structured pruning lowers `macs_dense` itself; unstructured pruning lowers only
`macs_effective`.
"""

from __future__ import annotations

import copy

import thop
import torch
from thop.vision.basic_hooks import zero_ops
from torch import Tensor, nn

from prunebench.metrics.effective import LAYER_TYPES
from prunebench.metrics.size import count_macs

AGREEMENT_TOLERANCE = 0.01
# Listed class by class: thop matches a rule of its own before a custom rule for a base class.
_FOLDED_INTO_CONV = {cls: zero_ops for cls in (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)}


def _example(model: nn.Module, input_shape: tuple[int, ...]) -> Tensor:
    first = next(model.parameters())
    return torch.zeros(1, *input_shape, device=first.device, dtype=first.dtype)


@torch.no_grad()
def macs_thop(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """thop's MAC count at batch 1 without BatchNorm, on a deep copy (thop attaches counters
    to the modules it profiles; the caller's model must come back untouched)."""
    profiled = copy.deepcopy(model)
    total_ops, _ = thop.profile(profiled, inputs=(_example(profiled, input_shape),),
                                custom_ops=_FOLDED_INTO_CONV, verbose=False)
    return int(total_ops)


@torch.no_grad()
def _layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(dense, nonzero-weight) MACs of the conv/linear layers, summed over every call."""
    totals = [0, 0]

    def count(module, args, output):
        positions = output.numel() // module.weight.shape[0]  # (batch, spatial) per output unit
        totals[0] += module.weight.numel() * positions
        totals[1] += int(torch.count_nonzero(module.weight)) * positions

    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, LAYER_TYPES)]
    try:
        model.eval()
        model(_example(model, input_shape))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return totals[0], totals[1]


def macs_effective(model: nn.Module, input_shape: tuple[int, ...], macs_dense: int) -> int:
    """`macs_dense` less the MACs of zero conv/linear weights (their products are zero)."""
    dense_layers, nonzero_layers = _layer_macs(model, input_shape)
    return macs_dense - dense_layers + nonzero_layers


def nonzero_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Dense-kernel MACs (`count_macs`) less the products with a zero conv/linear weight:
    what a kernel that skips zeros would do. A budget of MACs asks masks for this."""
    dense_layers, nonzero_layers = _layer_macs(model, input_shape)
    return count_macs(model, input_shape) - dense_layers + nonzero_layers


def mac_counts(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int | float | bool]:
    """All MAC numbers of the record (see the module docstring)."""
    dense = macs_thop(model, input_shape)
    flopcounter = count_macs(model, input_shape)
    difference = abs(dense - flopcounter) / max(flopcounter, 1)
    return {
        "macs_dense": dense,
        "macs_flopcounter": flopcounter,
        "macs_relative_difference": difference,
        "macs_agree": difference <= AGREEMENT_TOLERANCE,
        "macs_effective": macs_effective(model, input_shape, dense),
    }
