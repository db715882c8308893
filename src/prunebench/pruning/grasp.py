"""GraSP (Wang et al. 2020): prune at initialisation while preserving gradient flow.

With g = dL/dw and H the Hessian of the loss, removing weights changes the gradient norm
to first order by -w * (H g). The score is S = -w * (H g); the paper removes the weights
with the HIGHEST S (removing them reduces gradient flow least, or increases it) and keeps
the lowest, so the mask is the global top-k of -S = w * (H g).

Following the paper, L is the cross-entropy of the logits divided by `temperature`
(T = 200) on `samples_per_class` examples of every class (10). The examples are the first
ones of each class met while reading the calibration batches in order, so the sample is
deterministic; reading stops as soon as every class is full (the number of classes is the
width of the model's output). Hg is a double-backward product: g is computed first
without a graph, then z = g . dL/dw is built with a graph and Hg = dz/dw. Both passes go
through the sample in chunks of the calibration batch size, each chunk's loss weighted by
its share of the sample, so the result is the full-sample gradient (exactly so unless
BatchNorm is in train mode, where each chunk uses its own batch statistics). `loss_fn` must
therefore average over examples, as the default cross-entropy does.

g and Hg are taken over every conv/linear weight of the model (not only those in the
scope), because the gradient norm GraSP preserves is that of the whole network; only the
weights in the scope are ranked. With a current mask the copy is masked and g is zero on
pruned weights (they cannot move), so Hg is that of the masked network. As in SNIP, the
copy keeps the model's train/eval mode and dropout is seeded from `ctx.generator`.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from prunebench.errors import ConfigError
from prunebench.options import Option, positive_int
from prunebench.pruning.base import METHODS, PruneContext, register_method
from prunebench.pruning.mask import Mask, apply_mask, global_topk_mask
from prunebench.pruning.scope import Scope
from prunebench.pruning.snip import rng_from

log = logging.getLogger(__name__)


def sample_per_class(
    batches: Iterable[tuple[Tensor, Tensor]], samples_per_class: int, num_classes: int
) -> tuple[Tensor, Tensor, int]:
    """The first `samples_per_class` examples of each class, in reading order.

    Returns (inputs, labels, size of the first batch). Stops reading once all classes are full.
    """
    counts = torch.zeros(num_classes, dtype=torch.long)
    xs, ys, chunk = [], [], 0
    for x, y in batches:
        chunk = chunk or len(x)
        take = torch.zeros(len(y), dtype=torch.bool)
        for i, label in enumerate(y.tolist()):
            if not 0 <= label < num_classes:
                raise ConfigError(
                    f"method 'grasp': label {label} outside the model's {num_classes} outputs"
                )
            if counts[label] < samples_per_class:
                counts[label] += 1
                take[i] = True
        if take.any():
            xs.append(x[take.to(x.device)])
            ys.append(y[take.to(y.device)])
        if bool((counts >= samples_per_class).all()):
            break
    if not xs:
        raise ConfigError("method 'grasp' found no calibration examples")
    short = int((counts < samples_per_class).sum())
    if short:
        log.warning("grasp: %d of %d classes have fewer than %d calibration examples (fewest: "
                    "%d); raise the study's calibration_batches", short, num_classes,
                    samples_per_class, int(counts.min()))
    return torch.cat(xs), torch.cat(ys), chunk


def hessian_gradient_product(
    model: nn.Module,
    weights: dict[str, Tensor],
    inputs: Tensor,
    labels: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    temperature: float,
    chunk_size: int,
    gradient_mask: dict[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(g, Hg) of the temperature-scaled loss over `inputs`, w.r.t. `weights` only."""
    names, tensors = list(weights), list(weights.values())
    chunks = list(zip(inputs.split(chunk_size), labels.split(chunk_size)))

    def chunk_loss(x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(model(x) / temperature, y) * (len(x) / len(inputs))

    g = [torch.zeros_like(w) for w in tensors]
    for x, y in chunks:
        for acc, d in zip(g, torch.autograd.grad(chunk_loss(x, y), tensors)):
            acc.add_(d)
    if gradient_mask is not None:
        g = [acc * gradient_mask[n].to(acc.dtype) if n in gradient_mask else acc
             for n, acc in zip(names, g)]

    hg = [torch.zeros_like(w) for w in tensors]
    for x, y in chunks:
        grads = torch.autograd.grad(chunk_loss(x, y), tensors, create_graph=True)
        z = sum((d * gi).sum() for d, gi in zip(grads, g))
        for acc, d in zip(hg, torch.autograd.grad(z, tensors)):
            acc.add_(d)
    return dict(zip(names, g)), dict(zip(names, hg))


def grasp_scores(
    ctx: PruneContext, temperature: float, samples_per_class: int
) -> dict[str, Tensor]:
    """S = -w * (H g) for the weights in the scope (higher = removed first)."""
    model = copy.deepcopy(ctx.model)
    if ctx.mask is not None:
        apply_mask(model, ctx.mask)
    weights = Scope().params(model)
    for w in weights.values():
        w.requires_grad_(True)
    device = next(iter(weights.values())).device

    batches = iter(ctx.require_batches("grasp")())
    first = next(batches, None)
    if first is None:
        raise ConfigError("method 'grasp' found no calibration batches")
    with rng_from(ctx.generator, device):
        with torch.no_grad():
            num_classes = model(first[0].to(device)).shape[1]
        inputs, labels, chunk = sample_per_class(
            itertools.chain([first], batches), samples_per_class, num_classes
        )
        _, hg = hessian_gradient_product(
            model, weights, inputs.to(device), labels.to(device), ctx.loss_fn,
            temperature, chunk, ctx.mask,
        )
    return {name: -w.detach() * hg[name] for name, w in ctx.scope.params(model).items()}


@register_method("grasp", when="init", needs_data=True, options={
    "temperature": Option(200.0, float, "the logits are divided by it before the loss",
                          low=0.0, low_open=True),
    "samples_per_class": positive_int(10, "examples of every class in the sample"),
})
def grasp(ctx: PruneContext, sparsity: float) -> Mask:
    """Remove the weights with the highest -w * Hg (global ranking)."""
    options = METHODS.get("grasp").resolve_options(ctx.options)
    scores = grasp_scores(ctx, options["temperature"], options["samples_per_class"])
    return global_topk_mask({n: -s for n, s in scores.items()}, sparsity, ctx.mask)
