"""Parameter counts, achieved sparsity and MACs of a model as it runs.

MACs are counted by torch's `FlopCounterMode` on one example (batch 1) and halved: it counts
a multiply-accumulate of a matmul or convolution as 2 FLOPs, and only those ops, which is the
field's convention for MACs (BatchNorm, activations and pooling are not counted). These are
the MACs of dense kernels: a masked weight still costs its MAC, a removed channel does not.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunebench.metrics.effective import LAYER_TYPES


def size_counts(model: nn.Module) -> dict[str, int]:
    """All parameters (biases and BatchNorm included) and how many are nonzero."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return {"params_total": total, "params_nonzero": nonzero}


def sparsity_counts(model: nn.Module) -> dict[str, int | float]:
    """The sparsity a model achieved, counted from its weights (exact zeros), whole model.

    `weight_sparsity` is over every conv/linear weight, whatever the pruning scope left out
    (an excluded first layer counts, dense); `param_sparsity` is over all parameters, biases
    and BatchNorm included. A mask says what was asked; these say what the saved model is.
    """
    weights = [m.weight for m in model.modules() if isinstance(m, LAYER_TYPES)]
    weights_total = sum(w.numel() for w in weights)
    weights_nonzero = sum(int(torch.count_nonzero(w)) for w in weights)
    params = size_counts(model)
    return {
        "weights_total": weights_total,
        "weights_nonzero": weights_nonzero,
        "weight_sparsity": 1.0 - weights_nonzero / weights_total if weights_total else 0.0,
        "param_sparsity": 1.0 - params["params_nonzero"] / params["params_total"]
        if params["params_total"] else 0.0,
    }


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
