"""SNIP (Lee et al. 2019): prune at initialisation by connection sensitivity.

The sensitivity of weight w is |dL/dc| for a multiplicative gate c = 1 on it, which is
|dL/dw * w|. Only the first `batches` calibration batches are read; their gradients are
averaged (the gradient of the mean loss when the batches are the same size) before taking
the absolute value, so `batches=1` is the paper's single mini-batch. The score is computed
on a copy of the model, in its current train/eval mode, so BatchNorm running statistics
of the real model are untouched; with a current mask the gradient is that of the masked
network and pruned weights stay pruned. In train mode, dropout draws from a global RNG
seeded from `ctx.generator` (and restored afterwards), so a fixed seed gives a fixed mask.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterator

import torch
from torch import Tensor

from prunebench.errors import ConfigError
from prunebench.options import positive_int
from prunebench.pruning.base import METHODS, PruneContext, register_method
from prunebench.pruning.mask import Mask, apply_mask, global_topk_mask


@contextlib.contextmanager
def rng_from(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Seed the global RNG (used by dropout) from `generator`; restore it on exit."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def snip_scores(ctx: PruneContext, batches: int) -> dict[str, Tensor]:
    """|mean over the first `batches` batches of dL/dw| * |w| for every prunable weight."""
    model = copy.deepcopy(ctx.model)
    if ctx.mask is not None:
        apply_mask(model, ctx.mask)
    params = ctx.scope.params(model)
    for p in params.values():
        p.requires_grad_(True)
    device = next(iter(params.values())).device
    grads = {name: torch.zeros_like(p) for name, p in params.items()}
    used = 0
    with rng_from(ctx.generator, device):
        # islice never pulls the batch after the last one it returns.
        for x, y in itertools.islice(ctx.require_batches("snip")(), batches):
            loss = ctx.loss_fn(model(x.to(device)), y.to(device))
            for g, dg in zip(grads.values(), torch.autograd.grad(loss, list(params.values()))):
                g.add_(dg)
            used += 1
    if used < batches:
        raise ConfigError(
            f"methods.snip.batches is {batches} but the calibration data has only {used} batches"
        )
    return {name: (grads[name] / used * p.detach()).abs() for name, p in params.items()}


@register_method("snip", when="init", needs_data=True, options={
    "batches": positive_int(1, "calibration batches whose gradients are averaged"),
})
def snip(ctx: PruneContext, sparsity: float) -> Mask:
    """Keep the weights whose removal changes the loss most (global ranking)."""
    options = METHODS.get("snip").resolve_options(ctx.options)
    return global_topk_mask(snip_scores(ctx, options["batches"]), sparsity, ctx.mask)
