"""A processed tensor cache next to the raw files, so each dataset is parsed once.

The cache holds the uint8 tensors as distributed (before splitting and normalisation, so a
different val_size reuses it) plus the size, mtime and inode of every raw file it came from; a
raw file that is replaced, re-downloaded or edited changes those and the cache is rebuilt.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch

from prunebench.data.formats import RawSplits
from prunebench.io import atomic_torch_save

CACHE_NAME = "prunebench_v1.pt"

Fingerprint = dict[str, list[int]]


def fingerprint(paths: Iterable[Path]) -> Fingerprint:
    """Size, mtime (ns) and inode of each raw file: cheap to take, and changed by any rewrite.

    The inode catches files replaced by a rename (downloads, copies, checkouts) even where
    mtimes are too coarse to tell two writes apart.
    """
    stats = {path.name: path.stat() for path in paths}
    return {name: [st.st_size, st.st_mtime_ns, st.st_ino] for name, st in stats.items()}


def load_cache(path: Path, expected: Fingerprint) -> RawSplits | None:
    """The cached tensors when the cache exists and was built from the same raw files."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored["fingerprint"] != expected:
            return None
        return RawSplits(*(stored[field] for field in RawSplits._fields))
    except (OSError, EOFError, RuntimeError, KeyError, TypeError, pickle.UnpicklingError):
        return None  # an unreadable cache is rebuilt, never a reason for a run to fail


def save_cache(path: Path, raw: RawSplits, source: Fingerprint) -> None:
    """Write the cache atomically; a read-only data root only costs a re-parse next time."""
    try:
        atomic_torch_save({"fingerprint": source, **raw._asdict()}, path)
    except OSError as err:
        warnings.warn(f"could not write the data cache {path}: {err}", stacklevel=2)
