"""Mini-batches as index slices of tensors that already live on the training device.

Small datasets fit on the device whole, so a DataLoader would only add worker processes and
host-to-device copies. All randomness (the epoch permutation and the augmentation) is drawn
from one CPU generator and then moved to the data's device, so a seed gives the same batches
on CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from prunebench.errors import ConfigError


def random_crop_flip(
    x: Tensor, *, padding: int = 4, generator: torch.Generator | None = None
) -> Tensor:
    """Zero-pad a (N, C, H, W) batch, crop each sample at a random offset, flip half of them.

    Offsets are uniform in [0, 2 * padding] per axis and each sample is mirrored
    horizontally with probability 0.5. On normalised inputs the zero padding is the
    dataset's mean colour. One gather builds the whole batch, no loop over samples.
    """
    if x.ndim != 4 or padding < 0:
        raise ValueError(
            f"expected a (N, C, H, W) batch and padding >= 0, got {tuple(x.shape)} and {padding}"
        )
    n, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    rows = offsets[0] + torch.arange(h)
    cols = offsets[1] + torch.arange(w)
    cols = torch.where(flip, cols.flip(1), cols)
    padded = F.pad(x, (padding, padding, padding, padding))
    return padded[
        torch.arange(n, device=x.device).view(n, 1, 1, 1),
        torch.arange(c, device=x.device).view(1, c, 1, 1),
        rows.to(x.device).view(n, 1, h, 1),
        cols.to(x.device).view(n, 1, 1, w),
    ]


AUGMENTATIONS: dict[str, Callable[..., Tensor]] = {"crop_flip": random_crop_flip}


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches iterate_batches yields for n samples."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def check_batching(x, y, augment: str | None) -> None:
    """As many inputs as labels, and a known augmentation (or none)."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels")
    if augment is not None and augment not in AUGMENTATIONS:
        raise ConfigError(
            f"unknown augmentation {augment!r} (key data.augment); "
            f"allowed: {', '.join(AUGMENTATIONS)}"
        )


def iterate_batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: str | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of (images, labels) batches; every sample appears once (unless dropped).

    shuffle draws the epoch's permutation from `generator` at call time; augment names an
    entry of AUGMENTATIONS applied to each image batch with the same generator.
    """
    check_batching(x, y, augment)
    count = num_batches(len(x), batch_size, drop_last)
    order = torch.randperm(len(x), generator=generator).to(x.device) if shuffle else None
    return _batches(x, y, batch_size, count, order, augment, generator)


def _batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    count: int,
    order: Tensor | None,
    augment: str | None,
    generator: torch.Generator | None,
) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, count * batch_size, batch_size):
        stop = start + batch_size
        index: slice | Tensor = slice(start, stop) if order is None else order[start:stop]
        images, labels = x[index], y[index]
        if augment is not None:
            images = AUGMENTATIONS[augment](images, generator=generator)
        yield images, labels
