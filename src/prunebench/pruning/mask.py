"""Masks: a mapping from parameter name to a bool tensor of the same shape (True = kept).

A mask is plain data. It is saved next to the weights, applied in place, and summarised per
layer. Selecting the top-k scores is shared by every score-based method so that the achieved
sparsity is exact for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from prunebench.errors import ConfigError
from prunebench.io import atomic_torch_save, load_tensors

Mask = dict[str, Tensor]


def ones_mask(params: Mapping[str, Tensor]) -> Mask:
    """The dense mask over the given parameters."""
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in params.items()}


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mapping[str, Tensor]) -> None:
    """Zero every masked weight in place (exact zeros, not small values)."""
    params = dict(model.named_parameters())
    for name, m in mask.items():
        params[name].mul_(m.to(device=params[name].device, dtype=params[name].dtype))


@torch.no_grad()
def masked_nonzero(model: nn.Module, mask: Mapping[str, Tensor]) -> int:
    """How many of the weights that `mask` prunes are nonzero in `model`: 0 once the mask is
    applied. A saved masked model with any is not the model its mask describes."""
    params = dict(model.named_parameters())
    return sum(int(torch.count_nonzero(params[name][~m.to(params[name].device)]))
               for name, m in mask.items())


def sparsity_report(mask: Mapping[str, Tensor]) -> dict:
    """Global and per-layer weight counts of a mask (the prunable weights only)."""
    layers = {}
    total = kept = 0
    for name, m in mask.items():
        n, k = m.numel(), int(m.sum())
        layers[name] = {"total": n, "nonzero": k, "weight_sparsity": 1.0 - k / n}
        total += n
        kept += k
    return {
        "prunable_total": total,
        "prunable_nonzero": kept,
        "weight_sparsity": 1.0 - kept / total if total else 0.0,
        "per_layer": layers,
    }


def _ranked_keep(flat_scores: Tensor, n_keep: int) -> Tensor:
    """Bool vector keeping the n_keep highest scores; ties broken by position (stable)."""
    keep = torch.zeros(flat_scores.numel(), dtype=torch.bool, device=flat_scores.device)
    if n_keep > 0:
        order = torch.sort(flat_scores, descending=True, stable=True).indices
        keep[order[:n_keep]] = True
    return keep


def keep_count(n_active: int, fraction_to_prune: float) -> int:
    """How many of n_active weights survive pruning a fraction of them (rounded to nearest)."""
    return n_active - int(math.floor(fraction_to_prune * n_active + 0.5))


def _check_reachable(n_keep: int, active: Tensor, where: str) -> None:
    if n_keep > int(active.sum()):
        raise ConfigError(
            f"target sparsity is below the current mask's sparsity ({where}); "
            "pruned weights never come back, so the target must not decrease"
        )


def _prepare(scores: Mapping[str, Tensor], current: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """Scores as float64, with already-pruned weights at -inf so they never come back."""
    out = {}
    for name, s in scores.items():
        s = s.detach().to(torch.float64).clone()
        if current is not None and name in current:
            s[~current[name].to(s.device)] = -math.inf
        out[name] = s
    return out


def global_topk_mask(
    scores: Mapping[str, Tensor], sparsity: float, current: Mapping[str, Tensor] | None = None
) -> Mask:
    """Keep the highest scores across all layers so that `sparsity` of all weights is pruned.

    With a current mask, the target counts all weights (already-pruned ones included) and
    pruned weights stay pruned.
    """
    s = _prepare(scores, current)
    flat = torch.cat([v.flatten() for v in s.values()])
    n_keep = keep_count(flat.numel(), sparsity)
    _check_reachable(n_keep, flat > -math.inf, "all layers")
    return _unflatten(_ranked_keep(flat, n_keep), s)


def layerwise_topk_mask(
    scores: Mapping[str, Tensor],
    sparsity: float | Mapping[str, float],
    current: Mapping[str, Tensor] | None = None,
) -> Mask:
    """Keep the highest scores within each layer; `sparsity` may differ per layer."""
    s = _prepare(scores, current)
    out = {}
    for name, v in s.items():
        layer_sparsity = sparsity[name] if isinstance(sparsity, Mapping) else sparsity
        n_keep = keep_count(v.numel(), layer_sparsity)
        _check_reachable(n_keep, v > -math.inf, name)
        out[name] = _ranked_keep(v.flatten(), n_keep).view_as(v)
    return out


def _unflatten(keep: Tensor, like: Mapping[str, Tensor]) -> Mask:
    out, i = {}, 0
    for name, v in like.items():
        out[name] = keep[i : i + v.numel()].view_as(v)
        i += v.numel()
    return out


def save_mask(mask: Mapping[str, Tensor], path: str | Path) -> None:
    atomic_torch_save({k: v.detach().cpu() for k, v in mask.items()}, path)


def load_mask(path: str | Path) -> Mask:
    return load_tensors(path)
