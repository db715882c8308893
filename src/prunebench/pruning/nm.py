"""N:M semi-structured sparsity: in every group of M consecutive weights, N survive.

Groups run along the input dimension, the layout sparse tensor cores accelerate (2:4 on
NVIDIA Ampere and later): along in_features within each output row of a Linear layer, and
along input channels for Conv2d, whose weight is viewed as (out, kh, kw, in) for grouping.
Within a group the weights of largest magnitude survive (`score: magnitude`).

N:M fixes the sparsity at 1 - N/M, so the `sparsity` argument must equal it (within 1e-9);
anything else is a configuration error rather than a silently different sparsity. Layers
whose input dimension is not divisible by M (e.g. a first conv with 1 or 3 input channels)
cannot hold the pattern: they are left dense (a warning names them), so the global sparsity
of a model with such layers is below 1 - N/M. Pruned weights stay pruned: already-pruned
weights score -inf, and a group that already has more than M - N pruned weights keeps its
current mask.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from prunebench.errors import ConfigError
from prunebench.options import Option, choice, positive_int
from prunebench.pruning.base import METHODS, PruneContext, register_method
from prunebench.pruning.mask import Mask
from prunebench.pruning.wanda import rowwise_keep

log = logging.getLogger(__name__)

SCORES = ("magnitude",)


def _to_groups_layout(t: Tensor) -> Tensor:
    """Move the input dimension (dim 1) last: (out, in, kh, kw) -> (out, kh, kw, in)."""
    return t.movedim(1, -1)


def _from_groups_layout(t: Tensor) -> Tensor:
    return t.movedim(-1, 1)


def is_nm_sparse(tensor: Tensor, n: int, m: int) -> bool:
    """True if every group of m consecutive entries along dim 1 has at most n nonzeros.

    Works on weights and on bool masks of Linear (2-D) and Conv2d (4-D) layers; a tensor whose
    dim 1 is not divisible by m cannot be N:M sparse.
    """
    if tensor.dim() < 2 or tensor.shape[1] % m:
        return False
    groups = _to_groups_layout(tensor != 0).reshape(-1, m)
    return bool((groups.sum(1) <= n).all())


def nm_keep(scores: Tensor, n: int, m: int) -> Tensor:
    """Keep the n highest scores in every group of m along dim 1 (which must divide by m)."""
    grouped = _to_groups_layout(scores)
    keep = rowwise_keep(grouped.reshape(-1, m), n).view(grouped.shape)
    return _from_groups_layout(keep).contiguous()


def check_options(opts: Mapping[str, Any], key: str) -> None:
    n, m = opts["n"], opts["m"]
    if n >= m:
        raise ConfigError(
            f"{key}.n must be smaller than {key}.m (1 <= n < m: n of every m weights survive), "
            f"got n={n}, m={m}")


def _check_sparsity(n: int, m: int, sparsity: float) -> None:
    """The requested sparsity must be the one N:M implies, not silently another."""
    implied = 1.0 - n / m
    if abs(sparsity - implied) > 1e-9:
        raise ConfigError(
            f"methods.nm: n={n}, m={m} implies sparsity {implied:g} (1 - n/m), but sparsity "
            f"{sparsity:g} was requested; set the sparsity to {implied:g} or change n and m"
        )


@register_method(
    "nm", when="trained", validate=check_options,
    fixed_sparsity=lambda o: 1.0 - o["n"] / o["m"], options={
        "n": positive_int(2, "weights that survive in every group"),
        "m": Option(4, int, "size of a group of consecutive input weights", low=2),
        "score": choice("magnitude", SCORES, "which weights of a group survive"),
    },
)
def nm(ctx: PruneContext, sparsity: float) -> Mask:
    """N:M masks on every layer whose input dimension divides by M; the others stay dense."""
    options = METHODS.get("nm").resolve_options(ctx.options)
    n, m = options["n"], options["m"]
    _check_sparsity(n, m, sparsity)
    mask: Mask = {}
    dense = []
    for name, weight in ctx.params.items():
        current = None if ctx.mask is None else ctx.mask[name].to(weight.device)
        if weight.shape[1] % m:
            dense.append(f"{name} (input dimension {weight.shape[1]})")
            keep = torch.ones_like(weight, dtype=torch.bool)
        else:
            scores = weight.detach().abs().double()
            if current is not None:
                scores[~current] = -torch.inf
            keep = nm_keep(scores, n, m)
        mask[name] = keep if current is None else keep & current
    if len(dense) == len(mask):
        raise ConfigError(
            f"methods.nm: no prunable layer has an input dimension divisible by m={m}: "
            f"{', '.join(dense)}"
        )
    if dense:
        log.warning(
            "nm %d:%d leaves these layers dense (input dimension not divisible by %d): %s",
            n, m, m, ", ".join(dense),
        )
    return mask
