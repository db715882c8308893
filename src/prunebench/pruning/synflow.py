"""SynFlow (Tanaka et al. 2020): data-free iterative pruning by synaptic flow.

The network is linearised on a float64 copy: every parameter is replaced by its absolute
value and the copy is put in eval mode (BatchNorm uses its running statistics, dropout is
off). With an all-ones input, R = sum(f(1)) and the score of weight w is |dR/dw * w|.
Pruning is iterative: in round k of n the mask keeps the density d0 * (d/d0)^(k/n)
(`schedule: exponential`, the paper's; d0 is the current density, 1 without a mask, d the
target) or the sparsity grows linearly (`schedule: linear`); scores are recomputed on the
masked copy between rounds.

No data values are ever read. The input shape comes from the option `input_shape` or, when
it is not set, from the shape of the first calibration batch (its values are ignored).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from prunebench.errors import ConfigError
from prunebench.options import Option, choice, positive_int
from prunebench.pruning.base import METHODS, PruneContext, register_method
from prunebench.pruning.mask import Mask, apply_mask, global_topk_mask, ones_mask
from prunebench.pruning.scope import Scope

SCHEDULES = ("exponential", "linear")


def linearised_copy(model: nn.Module) -> nn.Module:
    """A float64, eval-mode copy of `model` with every parameter replaced by its |value|."""
    copy_ = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in copy_.parameters():
            p.abs_()
    return copy_


def synflow_scores(
    linearised: nn.Module, scope: Scope, input_shape: tuple[int, ...]
) -> dict[str, Tensor]:
    """|dR/dw * w| with R = sum(f(ones)) for the prunable weights of a linearised model."""
    params = scope.params(linearised)
    for p in params.values():
        p.requires_grad_(True)
    device = next(iter(params.values())).device
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    total = linearised(ones).sum()
    grads = torch.autograd.grad(total, list(params.values()))
    return {name: (g * p.detach()).abs() for (name, p), g in zip(params.items(), grads)}


def round_sparsities(
    current_sparsity: float, sparsity: float, iterations: int, schedule: str
) -> list[float]:
    """The target sparsity after each of the `iterations` rounds; the last is `sparsity`."""
    d0, d = 1.0 - current_sparsity, 1.0 - sparsity
    steps = range(1, iterations)
    if schedule == "exponential":
        rounds = [1.0 - d0 * (d / d0) ** (k / iterations) for k in steps]
    else:
        rounds = [current_sparsity + (sparsity - current_sparsity) * k / iterations for k in steps]
    return [*rounds, sparsity]


def _input_shape(ctx: PruneContext, option: tuple[int, ...] | None) -> tuple[int, ...]:
    """The option, else the dataset's input shape, else that of the first calibration batch."""
    if option is not None:
        return option
    if ctx.input_shape is not None:
        return tuple(ctx.input_shape)
    if ctx.batches is None:
        raise ConfigError(
            "method 'synflow' needs methods.synflow.input_shape (one example's shape, e.g. "
            "[3, 32, 32]) when the dataset's input shape is not known"
        )
    first = next(iter(ctx.batches()), None)
    if first is None:
        raise ConfigError(
            "method 'synflow' found no calibration batch to take the input shape from"
        )
    return tuple(first[0].shape[1:])


@register_method("synflow", when="init", options={
    "iterations": positive_int(100, "pruning rounds, scores recomputed between them"),
    "schedule": choice("exponential", SCHEDULES, "how the density falls over the rounds"),
    "input_shape": Option(None, list, "one example's shape (no batch dimension); null = the "
                          "dataset's", item=int, low=1, min_items=1, nullable=True),
})
def synflow(ctx: PruneContext, sparsity: float) -> Mask:
    """Iterative global pruning by synaptic-flow scores."""
    options = METHODS.get("synflow").resolve_options(ctx.options)
    iterations, schedule = options["iterations"], options["schedule"]
    input_shape = _input_shape(ctx, options["input_shape"])

    linearised = linearised_copy(ctx.model)
    mask = ones_mask(ctx.scope.params(linearised)) if ctx.mask is None else dict(ctx.mask)
    total = sum(m.numel() for m in mask.values())
    current_sparsity = 1.0 - sum(int(m.sum()) for m in mask.values()) / total
    if sparsity < current_sparsity:
        raise ConfigError(
            f"method 'synflow': sparsity {sparsity} is below the current mask's "
            f"{current_sparsity:.6f}; pruned weights cannot come back"
        )
    for round_sparsity in round_sparsities(current_sparsity, sparsity, iterations, schedule):
        apply_mask(linearised, mask)
        scores = synflow_scores(linearised, ctx.scope, input_shape)
        mask = global_topk_mask(scores, round_sparsity, mask)
    return mask
