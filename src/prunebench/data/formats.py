"""Readers for the raw on-disk formats: IDX (MNIST family) and CIFAR python pickles.

Readers validate what they read and raise DataError naming the file, because a truncated
download or a wrong file would otherwise surface much later as a shape error in training.
Callers hand them only files whose MD5 matched (see download.py).
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from math import prod
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from prunebench.errors import DataError

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
CIFAR_SIDE = 32

# The only globals a CIFAR batch names: numpy's array reconstructor (under its numpy 1 name, as
# in the official Python 2 pickles, and its numpy 2 name) and the two classes it is given.
_CIFAR_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class RawSplits(NamedTuple):
    """A dataset as distributed: uint8 images (N, C, H, W) and int64 labels (N,)."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def read_idx(path: Path, magic: int) -> Tensor:
    """The uint8 array of an IDX file (gzipped when its name ends in .gz), shaped by its header."""
    data = _read_bytes(path)
    found = int.from_bytes(data[:4], "big")
    if len(data) < 4 or found != magic:
        raise DataError(
            f"{path} is not an IDX file of the expected kind: magic 0x{found:08x}, expected "
            f"0x{magic:08x}; delete it so it is fetched again"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) < header or len(data) - header != prod(dims):
        raise DataError(
            f"{path} is truncated or corrupt: header says {dims} ({prod(dims)} bytes of data), "
            f"found {max(len(data) - header, 0)}; delete it so it is fetched again"
        )
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(dims)


def read_idx_images(path: Path, side: int = 28) -> Tensor:
    """IDX images as a uint8 (N, 1, side, side) tensor."""
    images = read_idx(path, IDX_IMAGES_MAGIC)
    if tuple(images.shape[1:]) != (side, side):
        raise DataError(f"{path}: images are {tuple(images.shape[1:])}, expected ({side}, {side})")
    return images.unsqueeze(1)


def read_idx_labels(path: Path) -> Tensor:
    """IDX labels as an int64 (N,) tensor."""
    return read_idx(path, IDX_LABELS_MAGIC).long()


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[Tensor, Tensor]:
    """Images (N, 3, 32, 32) uint8 and int64 labels of one CIFAR pickle.

    Unpickling can run code from the file. The downloader hands over only batches whose MD5
    is the official one; the restricted unpickler is the second wall, building nothing but
    dicts, lists, bytes, numbers and numpy arrays.
    """
    try:
        with path.open("rb") as stream:
            batch = _CifarUnpickler(stream, encoding="bytes").load()
        data, labels = batch[b"data"], batch[label_key]
    except (OSError, EOFError, pickle.UnpicklingError, TypeError, KeyError) as err:
        raise DataError(f"{path} is not a readable CIFAR batch ({err!r}); delete it") from err
    images = torch.as_tensor(data)
    if images.dtype != torch.uint8 or images.ndim != 2 or images.shape[1] != 3 * CIFAR_SIDE**2:
        raise DataError(
            f"{path}: b'data' is {images.dtype} {tuple(images.shape)}, expected uint8 (N, 3072)"
        )
    return images.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE), torch.as_tensor(labels, dtype=torch.long)


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside _CIFAR_GLOBALS, so a crafted batch
    cannot name os.system, exec or any other callable."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def check_labelled(images: Tensor, labels: Tensor, num_classes: int, source: Path) -> None:
    """Raise unless there is one label per image and every label is a valid class."""
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{source}: {len(labels)} labels for {len(images)} images")
    if len(labels) and not (int(labels.min()) >= 0 and int(labels.max()) < num_classes):
        raise DataError(f"{source}: labels outside 0..{num_classes - 1}")


def _read_bytes(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} cannot be read ({err}); delete it so it is fetched again") from err
