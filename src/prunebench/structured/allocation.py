"""Turn channel scores into the indices to prune: per layer, or with one global threshold."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

MODES = ("layer", "global")


def allocate(
    scores: Mapping[str, Tensor],
    channel_sparsity: float,
    mode: str = "layer",
    min_keep: int = 1,
    *,
    normalise: bool = True,
) -> dict[str, list[int]]:
    """Channels to prune per group (sorted indices), lowest scores first.

    "layer": each group loses round(channel_sparsity * size) channels.
    "global": round(channel_sparsity * total) channels go under one threshold on scores
    divided by their group's mean score. Raw scores are not comparable across layers (an L1
    filter norm grows with fan-in, BN scales drift per layer), so a raw threshold would strip
    whichever layers happen to have small weights; dividing by the mean turns each score into
    "importance relative to the rest of its layer", which is scale-free and keeps zeros at
    zero, but needs non-negative scores. `normalise=False` thresholds the raw scores instead,
    for scores already on one scale across layers (network slimming's |gamma|, trained
    under one L1 penalty, are thresholded raw in Liu et al. 2017).
    Both modes keep at least `min_keep` channels per group, so global mode prunes fewer than
    its target only when those caps leave too few candidates. Ties go to the lower group
    (in `scores` order), then the lower channel index, so the result is deterministic.
    """
    if mode not in MODES:
        raise ValueError(f"allocation mode must be one of {MODES}, got {mode!r}")
    if not 0.0 <= channel_sparsity <= 1.0:
        raise ValueError(f"channel_sparsity must lie in [0, 1], got {channel_sparsity}")
    if min_keep < 1:
        raise ValueError(f"min_keep must be at least 1 (an empty group cannot run), got {min_keep}")
    flat = {root: torch.as_tensor(s, dtype=torch.float64).flatten() for root, s in scores.items()}
    caps = {root: max(len(s) - min_keep, 0) for root, s in flat.items()}
    if mode == "layer":
        return {
            root: _lowest(s, min(round(channel_sparsity * len(s)), caps[root]))
            for root, s in flat.items()
        }
    if normalise:
        if any(bool((s < 0).any()) for s in flat.values()):
            raise ValueError("global allocation divides by each group's mean: scores must be >= 0")
        flat = {root: _relative(s) for root, s in flat.items()}
    target = round(channel_sparsity * sum(len(s) for s in flat.values()))
    return _global(flat, caps, target)


def _lowest(scores: Tensor, count: int) -> list[int]:
    """Indices of the `count` lowest scores, ties to the lower index, sorted."""
    order = torch.sort(scores, stable=True).indices
    return sorted(order[:count].tolist())


def _global(scores: dict[str, Tensor], caps: dict[str, int], target: int) -> dict[str, list[int]]:
    """The `target` lowest scores over all groups, skipping a group once its cap is reached."""
    roots = list(scores)
    owner = torch.cat([torch.full((len(scores[r]),), i) for i, r in enumerate(roots)])
    channel = torch.cat([torch.arange(len(scores[root])) for root in roots])
    chosen: dict[str, list[int]] = {root: [] for root in roots}
    taken = 0
    for position in torch.sort(torch.cat(list(scores.values())), stable=True).indices.tolist():
        if taken == target:
            break
        root = roots[owner[position]]
        if len(chosen[root]) < caps[root]:
            chosen[root].append(int(channel[position]))
            taken += 1
    return {root: sorted(indices) for root, indices in chosen.items()}


def _relative(scores: Tensor) -> Tensor:
    """Scores divided by their mean; an all-zero group stays all zero."""
    mean = scores.mean()
    return scores / mean if mean > 0 else torch.zeros_like(scores)
