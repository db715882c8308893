"""Check dataset files against their known MD5 before first use, and remember that they passed.

Every job of a study loads its dataset, and hashing CIFAR's 170 MB each time would be waste,
so a file that matched is recorded in a small JSON stamp in the data root (never in a mirror)
together with the stat that identifies that very file: size, mtime_ns, ctime_ns and inode. A
file that is edited, touched, replaced or copied over changes at least one of them (ctime
even when the mtime is put back) and is hashed again. The stamp is a cache, not a trust
anchor: whoever can rewrite the data can rewrite the stamp, so it only saves work against
accidents, never vouches for a file by itself.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

from prunebench.errors import DataError
from prunebench.io import atomic_write_json, read_json

STAMP_NAME = "prunebench_verified.json"
STAMP_VERSION = 1

_CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in chunks so an archive never sits in memory whole."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def md5_mismatch(source: str, actual: str, expected: str, fix: str) -> DataError:
    """The one-line error for a file that is not the official one, with what to do about it."""
    return DataError(f"checksum mismatch for {source}: md5 {actual}, expected {expected}; {fix}")


def verify_file(root: Path, rel: str, expected: str) -> Path:
    """root/rel once its MD5 is known to match: from the stamp if this very file passed before.

    The stat is taken before hashing, so a file changed while it is hashed is recorded with
    its old stat and hashed again next time.
    """
    path = root / rel
    entry = _entry(path, expected)
    files = _read_stamp(root)
    if files.get(rel) == entry:
        return path
    actual = file_md5(path)
    if actual != expected:
        raise md5_mismatch(
            str(path), actual, expected,
            "the file was changed or is not the official one; delete it so it is fetched again",
        )
    _write_stamp(root, {**files, rel: entry})
    return path


def record_verified(root: Path, rel: str, md5: str) -> None:
    """Stamp root/rel, just written from bytes whose MD5 matched, so it is not hashed again."""
    _write_stamp(root, {**_read_stamp(root), rel: _entry(root / rel, md5)})


def _entry(path: Path, md5: str) -> dict[str, Any]:
    st = path.stat()
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
        "md5": md5,
    }


def _read_stamp(root: Path) -> dict[str, Any]:
    """The stamp's entries by path under the root; a missing or unreadable stamp is empty,
    which only costs a re-hash."""
    try:
        stamp = read_json(root / STAMP_NAME)
    except (OSError, ValueError):
        return {}
    if not isinstance(stamp, dict) or stamp.get("version") != STAMP_VERSION:
        return {}
    files = stamp.get("files")
    return files if isinstance(files, dict) else {}


def _write_stamp(root: Path, files: dict[str, Any]) -> None:
    """Replace the stamp atomically. Concurrent jobs may drop each other's new entries, and a
    read-only root keeps none: both only cost a re-hash, never a wrong answer."""
    path = root / STAMP_NAME
    try:
        atomic_write_json(path, {"version": STAMP_VERSION, "files": files})
    except OSError as err:
        warnings.warn(
            f"could not record verified checksums in {path} ({err}); the data files will be "
            "hashed again on every load",
            stacklevel=3,
        )
