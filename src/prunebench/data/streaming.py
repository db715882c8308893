"""Inputs read batch by batch, for datasets that do not fit in memory.

A generic dataset made with `stream=True` (`image_folder(..., stream=True)`,
`numpy_arrays(folder_of_npy, stream=True)`) loads as a `DataSplits` whose inputs are
`SampleSet`s instead of tensors; the labels stay int64 tensors (they are small). A
`SampleSet` reads and normalises only the rows it is indexed with: an int gives one sample,
a slice or a 1-D index tensor/array a float32 batch on its device. So `iterate_batches`,
`evaluate`, calibration and the training loop, which only take `len(x)`, `x.device` and
`x[slice]` / `x[index_tensor]`, run on it unchanged, reading each batch in the main process:
the batches are the very numbers, in the very order, that the in-memory path gives (the same
permutation and augmentation draws from the same generator, the same per-element
normalisation), so results, determinism and resuming do not depend on the path.

`stream_batches` is `iterate_batches` with the reading done by `torch.utils.data.DataLoader`
workers: the epoch's permutation is drawn up front from the generator, the workers read
whole batches of it (a batch sampler of fixed index lists), and the augmentation is drawn in
the main process, batch by batch, from the same generator. Its batches equal
`iterate_batches`' for any number of workers. The training loop reads a streamed training
split with `stream_batches` (`training.loop.MemberBatches`); `evaluate` and the calibration
batches use `iterate_batches`, reading in the main process. A resumed epoch reads its
finished batches again to skip them (the same batches, only slower); a stack's members of
different seeds each read their own stream.

Slicing a `SampleSet` with a slice that is not a batch (`x[-n:]` for a validation fallback)
reads all those rows into memory; `subset(index)` gives a lazy view instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from prunebench.data.batching import AUGMENTATIONS, check_batching, num_batches
from prunebench.data.source import float_copy, normalise
from prunebench.errors import ConfigError

DEFAULT_WORKERS = 2


@dataclasses.dataclass(frozen=True, eq=False)
class SampleSet(torch.utils.data.Dataset):
    """Normalised float32 inputs of one split, read on demand from `rows` (an image folder's
    `ImageRows` or a memory-mapped `ArrayRows`) at the positions `index` (the split's rows,
    e.g. the training samples left after the validation split)."""

    rows: Any
    index: np.ndarray
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    where: str
    device: torch.device = torch.device("cpu")

    dtype = torch.float32

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.rows.shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, (int, np.integer)) or (isinstance(key, Tensor) and key.ndim == 0):
            return self[[int(key)]][0]
        if isinstance(key, Tensor):
            key = key.cpu().numpy()
        batch = self.rows[self.index[key]]  # key: a slice, a list or an index array
        return normalise(float_copy(batch), self.rows.dtype, self.scale, self.mean, self.std,
                         self.where).to(self.device)

    def to(self, device: str | torch.device) -> SampleSet:
        """The same inputs, read onto `device` (like `Tensor.to`, so `DataSplits.to` works)."""
        return dataclasses.replace(self, device=torch.device(device))

    def subset(self, key: Any) -> SampleSet:
        """A lazy view of some of the samples (a slice or an index array), nothing read."""
        if isinstance(key, Tensor):
            key = key.cpu().numpy()
        return dataclasses.replace(self, index=self.index[key])


def stream_batches(
    x: SampleSet | Tensor,
    y: Tensor,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: str | None = None,
    drop_last: bool = False,
    num_workers: int = DEFAULT_WORKERS,
    prefetch_factor: int | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """`iterate_batches` with the inputs read by `num_workers` DataLoader worker processes
    (0: in this process): the same batches, in the same order, with the same augmentation,
    for a given generator state. Workers draw no random numbers."""
    check_batching(x, y, augment)
    count = num_batches(len(x), batch_size, drop_last)
    order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
    batches = [order[start:start + batch_size] for start in range(0, count * batch_size,
                                                                   batch_size)]
    device = x.device
    source = x.to("cpu")  # workers make CPU tensors; the main process moves them
    loader = torch.utils.data.DataLoader(
        source, sampler=batches, batch_size=None, num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers else None,
        collate_fn=_identity,
    )
    return _stream(loader, batches, y, device, augment, generator)


def _stream(loader: Any, batches: Sequence[Tensor], y: Tensor, device: torch.device,
            augment: str | None, generator: torch.Generator | None
            ) -> Iterator[tuple[Tensor, Tensor]]:
    augmentation: Callable[..., Tensor] | None = None if augment is None else \
        AUGMENTATIONS[augment]
    try:
        for index, images in zip(batches, loader):
            images = images.to(device)
            if augmentation is not None:
                images = augmentation(images, generator=generator)
            yield images, y[index.to(y.device)]
    except ConfigError as err:  # a bad file found in a worker: its one line, not the
        raise type(err)(str(err).strip().splitlines()[0]) from None  # worker's traceback


def _identity(batch: Tensor) -> Tensor:
    return batch
