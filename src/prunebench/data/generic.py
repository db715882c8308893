"""Datasets of one's own in two generic formats, registered like the built-in ones.

    from prunebench.data import image_folder, numpy_arrays, register_dataset

    register_dataset(image_folder("flowers", "data/flowers"))           # train/<class>/*.png
    register_dataset(numpy_arrays("ecg", "data/ecg.npz", num_classes=5))  # x_train, y_train...

A study then names it as `data.name: flowers` (the plugin that registers it is imported
first). `format_dataset` builds the same entries from a params file's data keys.

Relative paths are taken from the working directory (the project root) when the data is
used, not when the entry is made. `shape()` (for planning) lists the class folders and reads
one image header, or the arrays' headers and labels; nothing is decoded. `load()` reads and
checks everything; bad data is a DataError (a ConfigError) whose one line names the file.

Normalisation statistics are per channel (axis 0 of a sample: C of (C, H, W) or (C, T); one
statistic for rank-1 samples such as (T,)), population mean and standard deviation over the
whole training folder/array (the validation samples carved out of it included, so they do
not depend on data.val_size), accumulated in float64. A constant channel gets std 1. They
are computed once and cached in `<path>.prunebench.json` next to the data, keyed by a digest
of the files' relative paths, sizes, mtimes, ctimes and inodes, unless `mean` and `std` are
given (in [0, 1] pixel units for images, the arrays' own units for NumPy data; one value, or
one per channel; for rank-1 samples also one per feature). The same file caches the files'
SHA-256 digest behind `fingerprint()`. The data root, mirror and download options of
`load()` do not apply (the data is where `path` says).

By default every split is read into memory as float32 tensors, like the built-in datasets
(memory-mapped .npy files are converted split by split), so the data must fit in host
memory, and on the training device. With `stream=True` (an image folder, or a folder of .npy
files) the inputs are read batch by batch instead, giving the same batches (`streaming.py`);
the statistics pass then reads the training inputs chunk by chunk, and the images of the
test split are checked when they are first read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunebench.data.arrays import NumpyArrays
from prunebench.data.batching import AUGMENTATIONS
from prunebench.data.datasets import (
    DATASETS,
    DatasetEntry,
    DataSplits,
    register_dataset,
    resolve_augmentation,
    val_split,
)
from prunebench.data.imagefolder import MODES, ImageFolder
from prunebench.data.source import (
    content_digest,
    float_copy,
    normalise,
    sidecar_path,
    stat_digest,
)
from prunebench.data.streaming import SampleSet
from prunebench.errors import ConfigError, DataError
from prunebench.io import atomic_write_json, read_json

SIDECAR_SUFFIX = ".prunebench.json"
SIDECAR_VERSION = 1
FINGERPRINT_LENGTH = 16
_CHUNK_BYTES = 64 << 20  # float64 working set of the statistics pass


@dataclass(frozen=True)
class FileDataset:
    """A dataset entry read from files of one generic format (`source`).

    name: its key in `DATASETS` (data.name). mean, std: given statistics (None: computed
    once from the training data and cached). augment: the default training augmentation (a
    name in `batching.AUGMENTATIONS`, for (C, H, W) inputs), or None. stream: load the inputs
    as `streaming.SampleSet`s, read batch by batch, instead of tensors in memory.
    """

    name: str
    source: ImageFolder | NumpyArrays
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: str | None = None
    stream: bool = False

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def num_classes(self) -> int:
        return self.shape()[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.shape()[1]

    def shape(self) -> tuple[int, tuple[int, ...]]:
        """(number of classes, input shape) from folder listings and file headers: nothing
        is decoded, and the cheap checks (layout, labels, array shapes) are made."""
        num_classes, input_shape = self.source.shape()
        self._check_stats_length(input_shape)
        if self.augment is not None and len(input_shape) != 3:
            raise ConfigError(f"dataset {self.name!r}: augmentation {self.augment!r} needs "
                              f"(C, H, W) inputs, not {input_shape}")
        return num_classes, input_shape

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
        """Read and check the data, split off the fixed validation set (as for the built-in
        datasets) and normalise. `root`, `mirror` and `download` do not apply: the data is
        read from `path`."""
        augmentation = resolve_augmentation(self.name, self.augment, augment)
        num_classes, input_shape = self.shape()
        arrays = self.source.rows() if self.stream else self.source.read()
        mean, std = self.statistics(arrays.train_x)
        train_idx, val_idx = val_split(len(arrays.train_y), val_size)
        train_idx, val_idx = train_idx.numpy(), val_idx.numpy()

        def inputs(part: str, index: np.ndarray | None = None) -> Any:
            x = getattr(arrays, part)
            where = self.source.where("x_" + part.split("_")[0])
            if self.stream:
                rows = np.arange(len(x)) if index is None else index
                return SampleSet(x, rows, self.source.scale, mean, std, where,
                                 torch.device(device))
            # a private float copy (x[index] is one already), normalised in place
            out = float_copy(x) if index is None else float_copy(x[index], copy=False)
            return normalise(out, x.dtype, self.source.scale, mean, std, where).to(device)

        def labels(part: str, index: np.ndarray | None = None) -> torch.Tensor:
            y = np.array(getattr(arrays, part), dtype=np.int64)  # never a read-only map
            return torch.from_numpy(y if index is None else y[index]).to(device)

        return DataSplits(
            name=self.name,
            num_classes=num_classes,
            input_shape=input_shape,
            train_x=inputs("train_x", train_idx),
            train_y=labels("train_y", train_idx),
            val_x=inputs("train_x", val_idx),
            val_y=labels("train_y", val_idx),
            test_x=inputs("test_x"),
            test_y=labels("test_y"),
            augment=augmentation,
        )

    def statistics(self, train_x: Any = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel: the given ones, else the cached ones, else computed from
        the training inputs `train_x` (an array or row reader; read now if None) and cached.
        With `stream`, the pass reads the inputs chunk by chunk, checking every image."""
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        files = self.source.files()
        digest = stat_digest(files)
        record = _read_sidecar(self.path, digest)
        key = self.source.stats_key()
        cached = record["stats"].get(key)
        if _valid_stats(cached):
            return tuple(cached["mean"]), tuple(cached["std"])
        if train_x is None:
            train_x = (self.source.rows() if self.stream else self.source.read()).train_x
        mean, std = channel_stats(train_x, self.source.scale,
                                  source=self.source.where("x_train"))
        record = _read_sidecar(self.path, digest)  # another process may have added to it
        record["stats"][key] = {"mean": list(mean), "std": list(std)}
        _write_sidecar(self.path, digest, record)
        return mean, std

    def content_hash(self) -> str:
        """SHA-256 of the sorted relative paths and file SHA-256s of the data, computed once
        and cached next to the data until a file changes."""
        files = self.source.files()
        digest = stat_digest(files)
        record = _read_sidecar(self.path, digest)
        if not isinstance(record.get("sha256"), str):
            record["sha256"] = content_digest(files)
            fresh = _read_sidecar(self.path, digest)
            _write_sidecar(self.path, digest, {**fresh, "sha256": record["sha256"]})
        return record["sha256"]

    def fingerprint(self) -> str:
        """A short stable hash of the data's content and of the options that change what the
        model sees (format, mode, size, num_classes, given statistics, default augmentation;
        not `stream`, which gives the very same batches); the same data copied elsewhere keeps
        it, any edited file changes it."""
        identity = {"format": self.source.format, "options": self.source.options(),
                    "mean": self.mean, "std": self.std, "augment": self.augment,
                    "files": self.content_hash()}
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_LENGTH]

    def _check_stats_length(self, input_shape: tuple[int, ...]) -> None:
        if self.mean is None:
            return
        channels = input_shape[0]
        if len(self.mean) not in (1, channels):
            raise ConfigError(f"dataset {self.name!r}: {len(self.mean)} means and stds for "
                              f"inputs of shape {input_shape}; give 1 or {channels}")


def channel_stats(x: np.ndarray, scale: float = 1.0, *, source: str = "inputs"
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Population mean and std of `x / scale` (N, *input_shape) per channel (axis 1 of x; all
    of a sample when samples are rank 1), accumulated in float64 chunk by chunk (merged with
    Chan's formula, so a large offset loses no precision). A constant channel gets std 1.
    NaN or infinite values are a DataError naming `source`."""
    per_sample = int(np.prod(x.shape[1:])) or 1
    step = max(1, _CHUNK_BYTES // (8 * per_sample))
    count, mean, m2 = 0, None, None
    for start in range(0, len(x), step):
        chunk = np.asarray(x[start:start + step], dtype=np.float64)
        if scale != 1.0:
            chunk = chunk / scale
        if not np.isfinite(chunk).all():
            raise DataError(f"{source}: NaN or infinite values")
        flat = chunk.reshape(-1) if chunk.ndim == 2 else \
            np.moveaxis(chunk, 1, 0).reshape(chunk.shape[1], -1)
        flat = flat.reshape(1, -1) if flat.ndim == 1 else flat
        n = flat.shape[1]
        chunk_mean = flat.mean(axis=1)
        chunk_m2 = ((flat - chunk_mean[:, None]) ** 2).sum(axis=1)
        if mean is None:
            count, mean, m2 = n, chunk_mean, chunk_m2
            continue
        total = count + n
        delta = chunk_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + chunk_m2 + delta**2 * (count * n / total)
        count = total
    if mean is None:
        raise DataError(f"{source}: no training samples")
    std = np.sqrt(m2 / count)
    std = np.where(std > 0, std, 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# ---------------------------------------------------------------- the cache next to the data


def _read_sidecar(path: Path, digest: str) -> dict[str, Any]:
    """The cached record for files with this digest; anything else (missing, unreadable,
    older version, other files) is an empty record, which only costs a recomputation."""
    try:
        record = read_json(sidecar_path(path, SIDECAR_SUFFIX))
    except (OSError, ValueError):
        record = None
    if (not isinstance(record, dict) or record.get("version") != SIDECAR_VERSION
            or record.get("files") != digest or not isinstance(record.get("stats"), dict)):
        return {"version": SIDECAR_VERSION, "files": digest, "stats": {}}
    return record


def _write_sidecar(path: Path, digest: str, record: dict[str, Any]) -> None:
    """Replace the record atomically; a read-only location only costs a recomputation."""
    target = sidecar_path(path, SIDECAR_SUFFIX)
    try:
        atomic_write_json(target, {**record, "version": SIDECAR_VERSION, "files": digest})
    except OSError as err:
        warnings.warn(f"could not cache dataset statistics in {target} ({err}); they will be "
                      "computed again on every load", stacklevel=3)


def _valid_stats(entry: Any) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("mean"), list)
            and isinstance(entry.get("std"), list) and len(entry["mean"]) == len(entry["std"])
            and all(isinstance(v, (int, float)) and math.isfinite(v)
                    for v in entry["mean"] + entry["std"]))


# ---------------------------------------------------------------- making entries


def image_folder(
    name: str,
    path: str | os.PathLike,
    *,
    mode: str | None = None,
    size: int | Sequence[int] | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    augment: str | None = None,
    stream: bool = False,
) -> FileDataset:
    """An entry for the image folder at `path` (train/<class>/*.png|jpg|jpeg, test/<class>/*).

    mode: "L" or "RGB" to convert every image to; None keeps the first image's (grey modes
    become "L", all others "RGB") and refuses images of another mode. size: (height, width),
    or one int for a square, to resize every image to; None refuses images of another size
    than the first. mean, std: per-channel statistics of the [0, 1] pixels (None: computed
    and cached). augment: a default training augmentation such as "crop_flip". stream:
    decode images batch by batch when they are used (see `streaming`) instead of all at load.
    Nothing is read until `shape()` or `load()`.
    """
    _check_name(name)
    if mode is not None and mode not in MODES:
        raise ConfigError(f"dataset {name!r}: mode must be one of {', '.join(MODES)} or null, "
                          f"got {mode!r}")
    if augment is not None and augment not in AUGMENTATIONS:
        raise ConfigError(f"dataset {name!r}: unknown augmentation {augment!r}; allowed: "
                          f"{', '.join(AUGMENTATIONS)} or null")
    source = ImageFolder(Path(path), mode, _size(name, size))
    return FileDataset(name, source, *_stats(name, mean, std), augment, _flag(name, stream))


def numpy_arrays(
    name: str,
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    stream: bool = False,
) -> FileDataset:
    """An entry for NumPy arrays at `path`: an .npz holding x_train, y_train, x_test, y_test,
    or a folder of those four as .npy files (memory-mapped). Inputs are (N, *input_shape) of
    any rank, labels 1-D integers. num_classes: None takes the largest label + 1. mean, std:
    statistics in the arrays' units (None: computed and cached). stream: read rows of the
    memory-mapped .npy files batch by batch when they are used (see `streaming`; not for an
    .npz, whose members cannot be memory-mapped). Nothing is read until `shape()` or
    `load()`."""
    _check_name(name)
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(
            num_classes, int) or num_classes < 1):
        raise ConfigError(f"dataset {name!r}: num_classes must be a positive integer or null, "
                          f"got {num_classes!r}")
    if _flag(name, stream) and Path(path).suffix.lower() == ".npz":
        raise ConfigError(f"dataset {name!r}: stream needs a folder of .npy files (an .npz "
                          f"cannot be memory-mapped), got {str(path)!r}")
    return FileDataset(name, NumpyArrays(Path(path), num_classes), *_stats(name, mean, std),
                       stream=stream)


FORMATS = {"image_folder": image_folder, "numpy": numpy_arrays}


def format_dataset(name: str, format: str, path: str | os.PathLike, *, key: str = "data",
                   **options: Any) -> FileDataset:
    """The entry a params file describes (data.name, data.format, data.path and the format's
    options), with errors naming `key`, e.g. `studies.s.data`."""
    if format not in FORMATS:
        raise ConfigError(f"unknown data format {format!r} (key {key}.format); allowed: "
                          f"{', '.join(FORMATS)}")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ConfigError(f"{key}.path must name the data (a folder or a file), got {path!r}")
    try:
        return FORMATS[format](name, path, **options)
    except TypeError as err:
        raise ConfigError(f"{key}: {err}; format {format!r} takes "
                          f"{_option_names(format)}") from None
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from None


def register_format_dataset(name: str, format: str, path: str | os.PathLike, *,
                            key: str = "data", **options: Any) -> DatasetEntry:
    """Register the entry a params file describes, once per process: the same description
    again returns the registered entry; another dataset of that name is a ConfigError."""
    entry = format_dataset(name, format, path, key=key, **options)
    if name in DATASETS:
        existing = DATASETS.get(name)
        if existing != entry:
            raise ConfigError(f"dataset {name!r} (key {key}.name) is already registered as "
                              "another dataset; choose another name")
        return existing
    return register_dataset(entry)


def _option_names(format: str) -> str:
    import inspect

    params = inspect.signature(FORMATS[format]).parameters
    return ", ".join(n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a dataset name must be a non-empty string, got {name!r}")


def _flag(name: str, stream: Any) -> bool:
    if not isinstance(stream, bool):
        raise ConfigError(f"dataset {name!r}: stream must be true or false, got {stream!r}")
    return stream


def _size(name: str, size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else size
    if (isinstance(pair, (list, tuple)) and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)):
        return int(pair[0]), int(pair[1])
    raise ConfigError(f"dataset {name!r}: size must be a positive integer or [height, width], "
                      f"got {size!r}")


def _stats(name: str, mean: Any, std: Any) -> tuple[tuple[float, ...] | None, ...]:
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise ConfigError(f"dataset {name!r}: give both mean and std, or neither (computed)")
    values = []
    for label, given in (("mean", mean), ("std", std)):
        seq = [given] if isinstance(given, (int, float)) else given
        if (not isinstance(seq, (list, tuple)) or not seq
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v) for v in seq)):
            raise ConfigError(f"dataset {name!r}: {label} must be a number or a list of "
                              f"numbers, got {given!r}")
        values.append(tuple(float(v) for v in seq))
    if len(values[0]) != len(values[1]):
        raise ConfigError(f"dataset {name!r}: {len(values[0])} means but {len(values[1])} stds")
    if not all(v > 0 for v in values[1]):
        raise ConfigError(f"dataset {name!r}: std must be positive, got {list(values[1])}")
    return values[0], values[1]


__all__ = [
    "FORMATS",
    "FileDataset",
    "channel_stats",
    "format_dataset",
    "image_folder",
    "numpy_arrays",
    "register_format_dataset",
]
