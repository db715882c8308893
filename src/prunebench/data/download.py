"""Make raw dataset files exist under the data root: already there, from a mirror, or downloaded.

Files land in torchvision's on-disk layout (``<root>/MNIST/raw/...``,
``<root>/cifar-10-batches-py/...``) so data roots shared with torchvision keep working. A
mirror is a local directory laid out like the root, which is how machines without network
get data. Every file is checked against its known MD5 before it is returned, wherever it came
from: files already in the root are hashed in place (once; see integrity.py), and every write
goes through a temp file that is renamed into place only after its MD5 matched, so an
interrupted or corrupt transfer never leaves a file that looks complete. Nothing is ever
written into the mirror.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

from tqdm import tqdm

from prunebench.data.integrity import md5_mismatch, record_verified, verify_file
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

# Checksums of the files as their authors distribute them (the ones that can be downloaded),
# keyed by path under the root.
DISTRIBUTED_MD5: dict[str, str] = {
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
# Checksums of the files inside those: the IDX files decompressed (hashed from the verified .gz
# files above) and the CIFAR batches as torchvision lists them, so a file that is not the
# official one is refused however it reached the root. batches.meta and meta are not read
# today; they are listed so the table matches torchvision's, whose data roots we share.
EXTRACTED_MD5: dict[str, str] = {
    "MNIST/raw/train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "MNIST/raw/train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "MNIST/raw/t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "MNIST/raw/t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    "FashionMNIST/raw/train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "FashionMNIST/raw/train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "FashionMNIST/raw/t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "FashionMNIST/raw/t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-10-batches-py/batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "cifar-100-python/meta": "7973b15100ade9c7d40fb424638fde48",
}
MD5: dict[str, str] = {**DISTRIBUTED_MD5, **EXTRACTED_MD5}

_BASE_URLS = {
    "MNIST": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "FashionMNIST": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
URLS: dict[str, str] = {
    rel: _BASE_URLS.get(rel.split("/")[0], _CIFAR_URL) + rel.rsplit("/", 1)[-1]
    for rel in DISTRIBUTED_MD5
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
    """Path of each CIFAR batch file, every one checked against its own MD5 before it is returned.

    Unpickling a crafted batch can run its code, so no batch reaches the reader unverified:
    batches in the root are hashed in place; missing ones are copied from a mirror's extracted
    folder when it holds them all, else extracted from the (MD5-verified) tarball, and each
    copy or member is checked before it is renamed into place.
    """
    rels = {name: f"{folder}/{name}" for name in CIFAR_MEMBERS[folder]}
    missing = [rel for rel in rels.values() if not (root / rel).is_file()]
    for rel in rels.values():
        if rel not in missing:
            verify_file(root, rel, MD5[rel])
    in_mirror = {rel: find_in_mirror(rel, mirror) for rel in missing}
    mirrored = {rel: source for rel, source in in_mirror.items() if source is not None}
    if len(mirrored) == len(missing):
        for rel, source in mirrored.items():
            copy_verified(source, root, rel)
    else:
        archive = fetch_first([CIFAR_ARCHIVES[folder]], root, mirror, download)
        extract_members(archive, missing, root)
    return {name: root / rel for name, rel in rels.items()}


def fetch_first(candidates: Sequence[str], root: Path, mirror: Path | None, download: bool) -> Path:
    """Path of the first candidate (relative to root) that exists, or that can be fetched,
    after its MD5 matched.

    The root is searched first, then the mirror, then the official server; candidates are
    tried in order at each stage, so listing the distributed form first prefers it.
    """
    for rel in candidates:
        if (root / rel).is_file():
            return verify_file(root, rel, MD5[rel])
    for rel in candidates:
        source = find_in_mirror(rel, mirror)
        if source is not None:
            copy_verified(source, root, rel)
            return root / rel
    dest = root / candidates[0]
    reasons = [f"the mirror {mirror} does not hold it" if mirror else "no data mirror is set"]
    downloadable = [rel for rel in candidates if rel in URLS]
    if download and downloadable:
        rel = downloadable[0]
        try:
            download_verified(URLS[rel], root, rel)
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


def copy_verified(source: Path, root: Path, rel: str) -> None:
    """Copy a mirror's file to root/rel atomically, refusing it unless its MD5 is the known one."""
    fix = (
        f"the mirror's copy is corrupt or not the official file, replace it "
        f"(nothing was written to {root / rel})"
    )
    with source.open("rb") as stream:
        _write_verified(_read_chunks(stream), root, rel, str(source), fix)


def download_verified(url: str, root: Path, rel: str) -> None:
    """Download url to root/rel atomically with a progress bar, refusing it on an MD5 mismatch."""
    dest = root / rel
    fix = f"the download was discarded (nothing was written to {dest}), try again"
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
            _write_verified(_counted(_read_chunks(response), bar), root, rel, url, fix)


def extract_members(archive: Path, rels: Iterable[str], root: Path) -> None:
    """Write the named regular files of a tar archive to root/<name>, in one pass, each
    refused unless its MD5 is the known one.

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
                _write_verified(
                    _read_chunks(stream), root, member.name, f"{member.name} in {archive}",
                    f"delete {archive} so it is fetched again",
                )
                wanted.remove(member.name)
    if wanted:
        raise DataError(
            f"{archive} lacks {', '.join(sorted(wanted))}; delete it so it is fetched again"
        )


def _write_verified(
    chunks: Iterable[bytes], root: Path, rel: str, source: str, fix: str
) -> None:
    """Write chunks to root/rel through a temp file that is renamed into place only when their
    MD5 is the known one; stamp the result, since its bytes were hashed on the way in."""
    expected = MD5[rel]

    def write(out: IO[bytes]) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        for chunk in chunks:
            digest.update(chunk)
            out.write(chunk)
        if digest.hexdigest() != expected:
            raise md5_mismatch(source, digest.hexdigest(), expected, fix)

    atomic_write(root / rel, write, mode="wb")
    record_verified(root, rel, expected)


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
