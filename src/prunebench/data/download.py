"""Make raw dataset files exist under the data root: already there, from a mirror, or downloaded.

Files land in torchvision's on-disk layout (``<root>/MNIST/raw/...``,
``<root>/cifar-10-batches-py/...``) so data roots shared with torchvision keep working. A
mirror is a local directory laid out like the root, which is how machines without network
get data. Every write goes through a temp file that is renamed into place only after its MD5
matched, so an interrupted or corrupt transfer never leaves a file that looks complete, and
nothing is ever written into the mirror.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

from tqdm import tqdm

from prunebench.errors import DataError
from prunebench.io import atomic_write

MIRROR_ENV = "PRUNEBENCH_DATA_MIRROR"

IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_MEMBERS: dict[str, tuple[str, ...]] = {
    "cifar-10-batches-py": (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
    "cifar-100-python": ("train", "test"),
}
CIFAR_ARCHIVES = {
    "cifar-10-batches-py": "cifar-10-python.tar.gz",
    "cifar-100-python": "cifar-100-python.tar.gz",
}

# Checksums of the files as their authors distribute them, keyed by path under the root.
MD5: dict[str, str] = {
    "MNIST/raw/train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "MNIST/raw/train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "MNIST/raw/t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "MNIST/raw/t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "FashionMNIST/raw/train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "FashionMNIST/raw/train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "FashionMNIST/raw/t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}

_BASE_URLS = {
    "MNIST": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "FashionMNIST": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
URLS: dict[str, str] = {
    rel: _BASE_URLS.get(rel.split("/")[0], _CIFAR_URL) + rel.rsplit("/", 1)[-1] for rel in MD5
}

_CHUNK = 1 << 20
_TIMEOUT_S = 60


def resolve_mirror(mirror: str | os.PathLike | None) -> Path | None:
    """The mirror argument, else $PRUNEBENCH_DATA_MIRROR; an empty value means no mirror."""
    value = os.environ.get(MIRROR_ENV) if mirror is None else mirror
    return Path(value).expanduser() if value else None


def ensure_idx_files(
    folder: str, root: Path, mirror: Path | None, download: bool
) -> dict[str, Path]:
    """Path of each IDX file of an MNIST-style folder, gzipped or not; fetches the .gz if absent."""
    return {
        stem: fetch_first(
            [f"{folder}/raw/{stem}.gz", f"{folder}/raw/{stem}"], root, mirror, download
        )
        for stem in IDX_STEMS
    }


def ensure_cifar_files(
    folder: str, root: Path, mirror: Path | None, download: bool
) -> dict[str, Path]:
    """Path of each CIFAR batch file, taken from a mirror's extracted folder or the tarball.

    Extracted batches in a mirror are copied as they are (the official checksums cover only
    the tarball; the pickle reader validates their contents). Otherwise the tarball is
    fetched, MD5-verified and the missing batches are extracted from it.
    """
    rels = {name: f"{folder}/{name}" for name in CIFAR_MEMBERS[folder]}
    missing = [rel for rel in rels.values() if not (root / rel).is_file()]
    in_mirror = {rel: find_in_mirror(rel, mirror) for rel in missing}
    mirrored = {rel: source for rel, source in in_mirror.items() if source is not None}
    if len(mirrored) == len(missing):
        for rel, source in mirrored.items():
            copy_verified(source, root / rel, md5=None)
    else:
        archive_rel = CIFAR_ARCHIVES[folder]
        archive = fetch_first([archive_rel], root, mirror, download)
        verify_md5(archive, MD5.get(archive_rel))
        extract_members(archive, missing, root)
    return {name: root / rel for name, rel in rels.items()}


def fetch_first(candidates: Sequence[str], root: Path, mirror: Path | None, download: bool) -> Path:
    """Path of the first candidate (relative to root) that exists, or that can be fetched.

    The root is searched first, then the mirror, then the official server; candidates are
    tried in order at each stage, so listing the checksummed form first prefers it.
    """
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    for rel in candidates:
        source = find_in_mirror(rel, mirror)
        if source is not None:
            copy_verified(source, root / rel, MD5.get(rel))
            return root / rel
    dest = root / candidates[0]
    reasons = [f"the mirror {mirror} does not hold it" if mirror else "no data mirror is set"]
    downloadable = [rel for rel in candidates if rel in URLS]
    if download and downloadable:
        rel = downloadable[0]
        try:
            download_verified(URLS[rel], root / rel, MD5.get(rel))
            return root / rel
        except (OSError, http.client.HTTPException) as err:
            reasons.append(f"downloading {URLS[rel]} failed ({err})")
    else:
        reasons.append("download is disabled" if downloadable else "it cannot be downloaded")
    raise _missing_error(dest, reasons)


def find_in_mirror(rel: str, mirror: Path | None) -> Path | None:
    """Where the mirror holds `rel`: laid out like the root, or the mirror is the dataset folder."""
    if mirror is None:
        return None
    if not mirror.is_dir():
        raise DataError(
            f"data mirror {mirror} is not a directory (key data.mirror or environment variable "
            f"{MIRROR_ENV}); allowed: a directory laid out like the data root"
        )
    folder, _, rest = rel.partition("/")
    candidates = [mirror / rel]
    if rest and mirror.name == folder:
        candidates.append(mirror / rest)
    return next((path for path in candidates if path.is_file()), None)


def copy_verified(source: Path, dest: Path, md5: str | None) -> None:
    """Copy source to dest atomically, refusing it when its MD5 differs from the known one."""
    with source.open("rb") as stream:
        _write_verified(_read_chunks(stream), dest, md5, str(source))


def download_verified(url: str, dest: Path, md5: str | None) -> None:
    """Download url to dest atomically with a progress bar, refusing it on an MD5 mismatch."""
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
            _write_verified(_counted(_read_chunks(response), bar), dest, md5, url)


def verify_md5(path: Path, md5: str | None) -> None:
    """Raise when a file already in the root is not the official one."""
    if md5 is None:
        return
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        for chunk in _read_chunks(stream):
            digest.update(chunk)
    if digest.hexdigest() != md5:
        raise DataError(
            f"{path} is corrupt: md5 {digest.hexdigest()}, expected {md5}; "
            "delete it so it is fetched again"
        )


def extract_members(archive: Path, rels: Iterable[str], root: Path) -> None:
    """Write the named regular files of a tar archive to root/<name>, in one pass.

    Destination paths are built from the names asked for, never from the archive, and only
    regular files are read, so links or `..` members cannot write outside the root — the
    protection tarfile's filter='data' gives, on every Python version.
    """
    wanted = set(rels)
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if member.name in wanted and member.isfile():
                stream = tar.extractfile(member)
                assert stream is not None  # extractfile returns None only for non-files
                _write_verified(_read_chunks(stream), root / member.name, None, str(archive))
                wanted.remove(member.name)
    if wanted:
        raise DataError(
            f"{archive} lacks {', '.join(sorted(wanted))}; delete it so it is fetched again"
        )


def _write_verified(chunks: Iterable[bytes], dest: Path, md5: str | None, source: str) -> None:
    def write(out: IO[bytes]) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
        if md5 is not None and digest.hexdigest() != md5:
            raise DataError(
                f"checksum mismatch for {source}: md5 {digest.hexdigest()}, expected {md5} "
                f"(for {dest}); the file is corrupt or not the official one"
            )

    atomic_write(dest, write, mode="wb")


def _read_chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def _counted(chunks: Iterable[bytes], bar: tqdm) -> Iterator[bytes]:
    for chunk in chunks:
        bar.update(len(chunk))
        yield chunk


def _missing_error(dest: Path, reasons: Sequence[str]) -> DataError:
    return DataError(
        f"missing data file {dest}: {'; '.join(reasons)}. Fix: put the file there, set a mirror "
        f"laid out like the data root (config key data.mirror or environment variable "
        f"{MIRROR_ENV}), or enable download (data.download: true)"
    )
