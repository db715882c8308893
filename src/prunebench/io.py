"""Atomic file writes: a temp file in the target directory, then os.replace.

A crash or a bad input never leaves a half-written output behind, and a file that exists is
complete, which is what lets Snakemake, DVC and the run-directory cache trust it. A write
that finds the disk, the quota or the file size limit full removes its temp file and raises
`StorageFullError`, which the CLI prints as one line.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from prunebench.errors import ConfigError, StorageFullError

_UMASK = os.umask(0)
os.umask(_UMASK)
# Out of room: the file system (ENOSPC), the user's quota (EDQUOT), the file size limit
# (EFBIG: `ulimit -f`, or a file system's largest file).
FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def atomic_write(path: str | Path, write: Callable[[IO], Any], mode: str = "w") -> Path:
    """Call write(fh) on a temp file next to `path`, then rename it into place. Out of room,
    the temp file is removed and `StorageFullError` raised."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        full = _storage_full(path, err)
        if full is None:
            raise
        raise full from None
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are shared like any file
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        full = _storage_full(path, err) if isinstance(err, Exception) else None
        if full is None:
            raise
        raise full from None
    return path


def _storage_full(path: Path, err: BaseException) -> StorageFullError | None:
    """The one-line error for a write of `path` that ran out of room, if `err` (or an error
    it was raised from: torch.save turns the OSError into a RuntimeError) says so."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in FULL:
            return StorageFullError(
                f"cannot write {path}: {err.strerror or os.strerror(err.errno)} "
                f"(errno {err.errno}); {_free_space(path.parent)}{_size_limit()}")
        err = err.__cause__ or err.__context__
    return None


def _free_space(directory: Path) -> str:
    """'1.2 MiB free on /work': the free space of the file system holding `directory`."""
    directory = directory.resolve()
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    mount = directory
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return f"free space on {mount} unknown"
    return f"{_size(free)} free on {mount}"


def _size_limit() -> str:
    """'; file size limit 32.0 KiB' when this process has one (`ulimit -f`), else ''."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return "" if limit == resource.RLIM_INFINITY else f"; file size limit {_size(limit)}"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text))


def json_text(obj: Any) -> str:
    """The JSON text every output file of prunebench has (sorted keys, indented)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json_text(obj))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda fh: torch.save(obj, fh), mode="wb")


def load_tensors(path: str | Path) -> Any:
    """`torch.load(weights_only=True)`, with an unreadable file named in a one-line error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (truncated, foreign or not a torch file)
        raise ConfigError(f"{str(path)!r} cannot be loaded ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else 'damaged'}); delete the "
                          f"run directory to redo it") from None


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
