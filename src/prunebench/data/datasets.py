"""Datasets as whole tensors with a fixed train/val/test split, normalised and ready to slice.

Every dataset is small enough to live on the training device, so batches are index slices
(see batching.py) and there is no DataLoader. The validation set is carved out of the
training set with a fixed seed, independent of the run seed, so every run of a benchmark
selects models on the same samples and the test set is never looked at during training.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

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

SPLITS = ("train", "val", "test")
VAL_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 360  # ~20% of the 1,797 digits, stratified, random_state=0: fixed forever

Ensure = Callable[[str, Path, Path | None, bool], dict[str, Path]]
LoadRaw = Callable[[Path, Path | None, bool], RawSplits]


@dataclass
class DataSplits:
    """One dataset on one device: float32 normalised images (N, C, H, W), int64 labels."""

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


@dataclass(frozen=True)
class _Spec:
    """How to get one dataset and what its pixel statistics are."""

    num_classes: int
    load_raw: LoadRaw
    scale: float  # maps stored integers to [0, 1]
    mean: tuple[float, ...]  # per channel, of the [0, 1] pixels
    std: tuple[float, ...]
    augment: str | None
    input_shape: tuple[int, ...]  # (C, H, W) of one image, known before any file is read


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
    return {"digits.csv.gz": Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"}


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


def _idx_spec(folder: str, mean: float, std: float) -> _Spec:
    load = partial(_load_cached, folder, ensure_idx_files, _parse_idx)
    return _Spec(10, load, 255.0, (mean,), (std,), None, (1, 28, 28))


def _cifar_spec(
    folder: str,
    test_name: str,
    label_key: bytes,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> _Spec:
    parse = partial(_parse_cifar, test_name=test_name, label_key=label_key, num_classes=num_classes)
    load = partial(_load_cached, folder, ensure_cifar_files, parse)
    return _Spec(num_classes, load, 255.0, mean, std, "crop_flip", (3, 32, 32))


_SPECS: dict[str, _Spec] = {
    # digits: mean/std of the fixed 1,437-sample train split after /16.
    "digits": _Spec(10, partial(_load_cached, "digits", _digits_source, _parse_digits), 16.0, (0.3054,), (0.3761,), None, (1, 8, 8)),
    "mnist": _idx_spec("MNIST", 0.1307, 0.3081),
    "fashion_mnist": _idx_spec("FashionMNIST", 0.2860, 0.3530),
    "cifar10": _cifar_spec(
        "cifar-10-batches-py",
        "test_batch",
        b"labels",
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _cifar_spec(
        "cifar-100-python",
        "test",
        b"fine_labels",
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}
DATASETS: tuple[str, ...] = tuple(_SPECS)


def dataset_shape(name: str) -> tuple[int, tuple[int, ...]]:
    """(number of classes, input shape) of a dataset, without reading it (for planning)."""
    if name not in _SPECS:
        raise ConfigError(
            f"unknown dataset {name!r} (key data.name); allowed: {', '.join(DATASETS)}"
        )
    return _SPECS[name].num_classes, _SPECS[name].input_shape


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
    if name not in _SPECS:
        raise ConfigError(
            f"unknown dataset {name!r} (key data.name); allowed: {', '.join(DATASETS)}"
        )
    spec = _SPECS[name]
    augmentation = _augmentation(name, spec, augment)
    raw = spec.load_raw(Path(root), resolve_mirror(mirror), download)
    if tuple(raw.train_x.shape[1:]) != spec.input_shape:
        raise ValueError(f"dataset {name!r}: images of shape {tuple(raw.train_x.shape[1:])}, "
                         f"expected {spec.input_shape}")
    train_idx, val_idx = _val_split(len(raw.train_y), val_size)
    return DataSplits(
        name=name,
        num_classes=spec.num_classes,
        input_shape=spec.input_shape,
        train_x=_normalise(raw.train_x[train_idx], spec).to(device),
        train_y=raw.train_y[train_idx].to(device),
        val_x=_normalise(raw.train_x[val_idx], spec).to(device),
        val_y=raw.train_y[val_idx].to(device),
        test_x=_normalise(raw.test_x, spec).to(device),
        test_y=raw.test_y.to(device),
        augment=augmentation,
    )


def _augmentation(name: str, spec: _Spec, augment: bool | None) -> str | None:
    if augment is None:
        return spec.augment
    if not isinstance(augment, bool):
        raise ConfigError(f"data.augment must be true, false or null; got {augment!r}")
    if augment and spec.augment is None:
        raise ConfigError(
            f"dataset {name!r} has no augmentation (key data.augment); allowed: false or null"
        )
    return spec.augment if augment else None


def _val_split(n: int, val_size: float | int) -> tuple[Tensor, Tensor]:
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


def _normalise(images: Tensor, spec: _Spec) -> Tensor:
    """Standardise per channel with the dataset's fixed statistics (never the batch's)."""
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return (images.float() / spec.scale - mean) / std
