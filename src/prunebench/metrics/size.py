"""Parameter counts and MACs of a model as it runs.

MACs are counted by torch's `FlopCounterMode` on one example (batch 1) and halved: it counts
a multiply-accumulate of a matmul or convolution as 2 FLOPs, and only those ops, which is the
field's convention for MACs (BatchNorm, activations and pooling are not counted). These are
the MACs of dense kernels: a masked weight still costs its MAC, a removed channel does not.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def size_counts(model: nn.Module) -> dict[str, int]:
    """All parameters (biases and BatchNorm included) and how many are nonzero."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return {"params_total": total, "params_nonzero": nonzero}


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Dense-kernel multiply-accumulates of one forward pass at batch 1."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2
