"""What a generic dataset format reads: validated arrays, and the files they come from.

A `Source` (an image folder, NumPy arrays) knows its files, its shape (cheaply, without
decoding the data) and how to read the four arrays; `FileDataset` (generic.py) adds the
statistics, the fingerprint, the validation split and the normalisation, the same for every
format.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from prunebench.errors import DataError
from prunebench.io import file_sha256


class Arrays(NamedTuple):
    """A dataset as stored: inputs (N, *input_shape) of any real dtype (in memory or
    memory-mapped) and int64 labels (N,), already checked against each other."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


class Source(Protocol):
    """One on-disk format of one dataset.

    format: the format's name ("image_folder", "numpy"); scale: what the stored values are
    divided by before the statistics apply (255 for 8-bit pixels, 1 for raw arrays).
    """

    format: str
    scale: float

    @property
    def path(self) -> Path: ...

    def options(self) -> dict[str, Any]:
        """The loading options that change the arrays (part of the fingerprint)."""
        ...

    def stats_key(self) -> str:
        """Names the statistics of these arrays among those cached for the same files."""
        ...

    def files(self) -> dict[str, Path]:
        """Every file the data is read from, by its path relative to the dataset (posix)."""
        ...

    def shape(self) -> tuple[int, tuple[int, ...]]:
        """(number of classes, input shape) with the cheap checks, without decoding the data."""
        ...

    def read(self) -> Arrays:
        """The four arrays, every check done; bad data is a DataError naming its file."""
        ...

    def rows(self) -> Arrays:
        """The four arrays for streaming, every cheap check done: the inputs as row readers
        (`len`, `shape`, `dtype`; indexing with a slice or an index array reads those rows
        only, and they pickle without their data, for DataLoader workers), labels in memory."""
        ...

    def where(self, part: str) -> str:
        """The file (and member) that holds `part` ("x_train", ...), for error messages."""
        ...


def stat_digest(files: Mapping[str, Path]) -> str:
    """A hash of the relative path, size, mtime, ctime and inode of every file: cheap to take
    (no file is read) and changed by any edit, copy or replacement, so caches keyed by it are
    rebuilt when the data changes."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        st = files[rel].stat()
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0"
                      f"{st.st_ino}\n".encode())
    return digest.hexdigest()


def content_digest(files: Mapping[str, Path]) -> str:
    """SHA-256 over the sorted relative paths and the SHA-256 of each file's bytes."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{rel}\0{file_sha256(files[rel])}\n".encode())
    return digest.hexdigest()


def one_line(err: BaseException) -> str:
    """An exception as one short line for a DataError message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def sidecar_path(path: Path, suffix: str) -> Path:
    """A file next to the dataset (never inside it, so it changes neither the dataset's
    listing nor its fingerprint): `data/my_ds` gives `data/my_ds<suffix>`."""
    path = Path(os.path.abspath(path))
    return path.parent / f"{path.name}{suffix}"


def normalise(out: np.ndarray, stored: np.dtype, scale: float, mean: Sequence[float],
              std: Sequence[float], where: str) -> torch.Tensor:
    """(x / scale - mean) / std per channel (axis 1 of the batch `out`), in place on the
    float copy `out`, returned as a float32 tensor; NaN or infinite values in float data
    (`stored` is the dtype as stored) are a DataError naming the file `where`.

    The in-memory and the streaming path both call this, on a whole split or on a batch: the
    operations per element are the same, so both give the very same numbers."""
    shape = (-1,) + (1,) * (out.ndim - 2)
    if scale != 1.0:
        out /= scale
    out -= np.asarray(mean, dtype=out.dtype).reshape(shape)
    out /= np.asarray(std, dtype=out.dtype).reshape(shape)
    if np.issubdtype(stored, np.floating) and not np.isfinite(out).all():
        raise DataError(f"{where}: NaN or infinite values")
    return torch.from_numpy(out).float()


def float_copy(x: np.ndarray, copy: bool = True) -> np.ndarray:
    """x as float64 (when stored so) or float32, in memory; `copy=False` when x is a fresh
    array already (a fancy-indexed one) that may be modified in place."""
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    return np.array(x, dtype=dtype) if copy else x.astype(dtype, copy=False)
