"""Datasets as whole tensors with a fixed train/val/test split, normalised and ready to slice.

Every built-in dataset is small enough to live on the training device, so batches are index
slices (see batching.py) and there is no DataLoader (a generic dataset too large for memory can
stream instead: see streaming.py). The validation set is carved out of the training set with
a fixed seed, independent of the run seed, so every run of a benchmark selects models on the
same samples and the test set is never looked at during training.

`DATASETS` is the `Registry` (key data.name) of dataset entries: each knows its class count
and input shape without reading the data (`shape()`), and how to fetch, cache and normalise
its splits (`load()`). The built-in ones are `Dataset`s (fixed files, fixed statistics); the
generic formats (an image folder, NumPy arrays: see `prunebench.data.generic`) are
`FileDataset`s made by `image_folder(...)` and `numpy_arrays(...)`. Both satisfy
`DatasetEntry`. `register_dataset(entry)` adds one; `load_dataset`, `dataset_shape` and
`dataset_fingerprint` look them up.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from prunebench.data.cache import CACHE_NAME, fingerprint, load_cache, save_cache
from prunebench.data.download import ensure_cifar_files, ensure_idx_files, resolve_mirror
from prunebench.data.formats import (
    RawSplits,
    check_labelled,
    read_cifar_batch,
    read_idx_images,
    read_idx_labels,
)
from prunebench.errors import ConfigError
from prunebench.registry import Registry

SPLITS = ("train", "val", "test")
VAL_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 360  # ~20% of the 1,797 digits, stratified, random_state=0: fixed forever

Ensure = Callable[[str, Path, Path | None, bool], dict[str, Path]]
LoadRaw = Callable[[Path, Path | None, bool], RawSplits]


@dataclass
class DataSplits:
    """One dataset on one device: float32 normalised inputs (N, *input_shape), int64 labels.

    input_shape is (C, H, W) for images; generic NumPy datasets may have any rank ((T,) for a
    sequence, (C, T), ...).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    augment: str | None

    def to(self, device: str | torch.device) -> DataSplits:
        """A copy with every tensor on `device`."""
        fields = [f"{split}_{part}" for split in SPLITS for part in ("x", "y")]
        return dataclasses.replace(self, **{f: getattr(self, f).to(device) for f in fields})

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """Images and labels of "train", "val" or "test"."""
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


@runtime_checkable
class DatasetEntry(Protocol):
    """What `DATASETS` holds and the pipeline uses: a name, the shape for planning, the
    splits for running, and a content fingerprint for run identity (None: the name is the
    identity, as for the built-in datasets)."""

    @property
    def name(self) -> str: ...

    def shape(self) -> tuple[int, tuple[int, ...]]: ...

    def load(
        self,
        root: str | os.PathLike = "data",
        *,
        mirror: str | os.PathLike | None = None,
        download: bool = True,
        val_size: float | int = 0.1,
        device: str | torch.device = "cpu",
        augment: bool | None = None,
    ) -> DataSplits: ...

    def fingerprint(self) -> str | None: ...


@dataclass(frozen=True)
class Dataset:
    """One registered dataset: what it is, known without reading a file, and how to load it.

    name: its key in `DATASETS` (config key data.name).
    num_classes, input_shape: the label count and one image's (C, H, W); `shape()` gives both
    to the planner, which sizes models before any data is fetched.
    load_raw(root, mirror, download) -> RawSplits: uint8 images and int64 labels as
        distributed, fetched and verified as needed (`cached_loader` adds the tensor cache).
    scale: maps stored integers to [0, 1]; mean, std: fixed per-channel statistics of the
        [0, 1] pixels, used to standardise every split (never the batch's own statistics).
    augment: the training augmentation used unless data.augment says otherwise (a name in
        `batching.AUGMENTATIONS`), or None.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    load_raw: LoadRaw = field(repr=False, compare=False)
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str | None = None

    def __post_init__(self) -> None:
        for name in ("input_shape", "mean", "std"):  # lists from a plugin compare as tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        channels = self.input_shape[0] if len(self.input_shape) == 3 else None
        if channels is None or not len(self.mean) == len(self.std) == channels:
            raise ValueError(f"dataset {self.name!r}: input_shape {self.input_shape} must be "
                             f"(C, H, W) with C = {len(self.mean)} means and {len(self.std)} stds")

    def shape(self) -> tuple[int, tuple[int, ...]]:
        """(number of classes, input shape), without reading any data."""
        return self.num_classes, self.input_shape

    def fingerprint(self) -> str | None:
        """None: a built-in dataset's files are fixed by their MD5s, so its name is its identity."""
        return None

    def load(
        self,
        root: str | os.PathLike = "data",
        *,
        mirror: str | os.PathLike | None = None,
        download: bool = True,
        val_size: float | int = 0.1,
        device: str | torch.device = "cpu",
        augment: bool | None = None,
    ) -> DataSplits:
        """Read the raw splits, split off the fixed validation set and normalise (see
        `load_dataset`, which looks the entry up by name and calls this)."""
        augmentation = self._augmentation(augment)
        raw = self.load_raw(Path(root), resolve_mirror(mirror), download)
        if tuple(raw.train_x.shape[1:]) != self.input_shape:
            raise ValueError(f"dataset {self.name!r}: images of shape "
                             f"{tuple(raw.train_x.shape[1:])}, expected {self.input_shape}")
        train_idx, val_idx = val_split(len(raw.train_y), val_size)
        return DataSplits(
            name=self.name,
            num_classes=self.num_classes,
            input_shape=self.input_shape,
            train_x=self._normalise(raw.train_x[train_idx]).to(device),
            train_y=raw.train_y[train_idx].to(device),
            val_x=self._normalise(raw.train_x[val_idx]).to(device),
            val_y=raw.train_y[val_idx].to(device),
            test_x=self._normalise(raw.test_x).to(device),
            test_y=raw.test_y.to(device),
            augment=augmentation,
        )

    def _augmentation(self, augment: bool | None) -> str | None:
        return resolve_augmentation(self.name, self.augment, augment)

    def _normalise(self, images: Tensor) -> Tensor:
        """Standardise per channel with the dataset's fixed statistics (never the batch's)."""
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (images.float() / self.scale - mean) / std


def resolve_augmentation(name: str, default: str | None, augment: bool | None) -> str | None:
    """The augmentation a load uses: the dataset's `default` unless data.augment (`augment`)
    turns it off, or asks for one the dataset does not have (a ConfigError)."""
    if augment is None:
        return default
    if not isinstance(augment, bool):
        raise ConfigError(f"data.augment must be true, false or null; got {augment!r}")
    if augment and default is None:
        raise ConfigError(f"dataset {name!r} has no augmentation (key data.augment); "
                          "allowed: false or null")
    return default if augment else None


DATASETS: Registry[DatasetEntry] = Registry("dataset", "data.name", sort=False)

_Entry = TypeVar("_Entry", bound=DatasetEntry)


def register_dataset(entry: _Entry) -> _Entry:
    """Add `entry` (a `Dataset`, or a `FileDataset` from `image_folder`/`numpy_arrays`) to
    `DATASETS` under `entry.name` (a name registered twice is a ValueError)."""
    return DATASETS.register(entry.name, entry)


def dataset_shape(name: str) -> tuple[int, tuple[int, ...]]:
    """(number of classes, input shape) of a dataset, without reading it (for planning)."""
    return DATASETS.get(name).shape()


def dataset_fingerprint(entry: str | DatasetEntry) -> str | None:
    """A short content hash of a dataset (by name or entry), for run identity: None for the
    built-in datasets (their name is their identity); for a generic one, a hash of its files'
    contents and its loading options, computed once and cached next to the data."""
    if isinstance(entry, str):
        entry = DATASETS.get(entry)
    return entry.fingerprint()


def load_dataset(
    name: str,
    root: str | os.PathLike = "data",
    *,
    mirror: str | os.PathLike | None = None,
    download: bool = True,
    val_size: float | int = 0.1,
    device: str | torch.device = "cpu",
    augment: bool | None = None,
) -> DataSplits:
    """Load a dataset, fetching missing raw files, and split off a fixed validation set.

    mirror: local directory laid out like `root` to copy missing files from; None reads
    $PRUNEBENCH_DATA_MIRROR. val_size: fraction of the training set in [0, 1), or a count.
    augment: None keeps the dataset's default ("crop_flip" for CIFAR), False disables it.
    """
    return DATASETS.get(name).load(root, mirror=mirror, download=download, val_size=val_size,
                                   device=device, augment=augment)


def val_split(n: int, val_size: float | int) -> tuple[Tensor, Tensor]:
    """Sorted train and validation indices from a permutation fixed by VAL_SPLIT_SEED."""
    n_val = _val_count(n, val_size)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    return order[n_val:].sort().values, order[:n_val].sort().values


def _val_count(n: int, val_size: float | int) -> int:
    count: int | None = None
    if isinstance(val_size, int) and not isinstance(val_size, bool):
        count = val_size
    elif isinstance(val_size, float) and 0 <= val_size < 1:
        count = round(val_size * n)
    if count is None or not 0 <= count < n:
        raise ConfigError(
            f"data.val_size must be a fraction in [0, 1) or a count in [0, {n}) that leaves "
            f"training samples; got {val_size!r}"
        )
    return count


def cached_loader(
    folder: str, ensure: Ensure, parse: Callable[[dict[str, Path]], RawSplits]
) -> LoadRaw:
    """A `Dataset.load_raw` for a file-based dataset under root/folder: `ensure` fetches and
    verifies its files, `parse` reads them once, and later loads read the tensor cache."""
    return partial(_load_cached, folder, ensure, parse)


def _load_cached(
    folder: str,
    ensure: Ensure,
    parse: Callable[[dict[str, Path]], RawSplits],
    root: Path,
    mirror: Path | None,
    download: bool,
) -> RawSplits:
    """Raw tensors of a file-based dataset, parsed once and then read from the tensor cache."""
    paths = ensure(folder, root, mirror, download)
    cache = root / folder / "processed" / CACHE_NAME
    source = fingerprint(paths.values())
    raw = load_cache(cache, source)
    if raw is None:
        raw = parse(paths)
        save_cache(cache, raw, source)
    return raw


def _parse_idx(paths: dict[str, Path]) -> RawSplits:
    tensors = []
    for prefix in ("train", "t10k"):
        labels_path = paths[f"{prefix}-labels-idx1-ubyte"]
        images = read_idx_images(paths[f"{prefix}-images-idx3-ubyte"])
        labels = read_idx_labels(labels_path)
        check_labelled(images, labels, 10, labels_path)
        tensors += [images, labels]
    return RawSplits(*tensors)


def _parse_cifar(
    paths: dict[str, Path], *, test_name: str, label_key: bytes, num_classes: int
) -> RawSplits:
    def read(names: list[str]) -> tuple[Tensor, Tensor]:
        images, labels = [], []
        for name in names:
            batch_images, batch_labels = read_cifar_batch(paths[name], label_key)
            check_labelled(batch_images, batch_labels, num_classes, paths[name])
            images.append(batch_images)
            labels.append(batch_labels)
        return torch.cat(images), torch.cat(labels)

    return RawSplits(*read([n for n in paths if n != test_name]), *read([test_name]))


def _digits_source(folder: str, root: Path, mirror: Path | None, download: bool) -> dict[str, Path]:
    """The data file inside scikit-learn, found without importing it (that takes ~1 s, and
    the tensor cache makes the import unnecessary after the first load)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("dataset 'digits' (key data.name) needs scikit-learn installed")
    package = Path(spec.submodule_search_locations[0])
    return {"digits.csv.gz": package / "datasets" / "data" / "digits.csv.gz"}


def _parse_digits(paths: dict[str, Path]) -> RawSplits:
    """scikit-learn's bundled 8x8 digits (values 0..16): the dataset that needs no files."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    train, test = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_SIZE, stratify=bunch.target, random_state=0
    )
    train, test = torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(test))
    return RawSplits(images[train], labels[train], images[test], labels[test])


def _idx_dataset(name: str, folder: str, mean: float, std: float) -> Dataset:
    load = cached_loader(folder, ensure_idx_files, _parse_idx)
    return Dataset(name, 10, (1, 28, 28), load, 255.0, (mean,), (std,))


def _cifar_dataset(
    name: str,
    folder: str,
    test_name: str,
    label_key: bytes,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Dataset:
    parse = partial(_parse_cifar, test_name=test_name, label_key=label_key, num_classes=num_classes)
    load = cached_loader(folder, ensure_cifar_files, parse)
    return Dataset(name, num_classes, (3, 32, 32), load, 255.0, mean, std, "crop_flip")


# Registration order is the order the names are listed in: smallest first.
# digits: mean/std of the fixed 1,437-sample train split after /16.
register_dataset(Dataset(
    "digits", 10, (1, 8, 8), cached_loader("digits", _digits_source, _parse_digits),
    16.0, (0.3054,), (0.3761,),
))
register_dataset(_idx_dataset("mnist", "MNIST", 0.1307, 0.3081))
register_dataset(_idx_dataset("fashion_mnist", "FashionMNIST", 0.2860, 0.3530))
register_dataset(_cifar_dataset(
    "cifar10", "cifar-10-batches-py", "test_batch", b"labels", 10,
    (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
))
register_dataset(_cifar_dataset(
    "cifar100", "cifar-100-python", "test", b"fine_labels", 100,
    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
))
