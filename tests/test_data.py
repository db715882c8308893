"""Data loading, fetching and batching, on tiny files written by the tests themselves."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from prunebench.data import (
    DATASETS,
    DataSplits,
    download,
    integrity,
    iterate_batches,
    load_dataset,
    num_batches,
    random_crop_flip,
)
from prunebench.data.cache import CACHE_NAME
from prunebench.data.formats import read_cifar_batch
from prunebench.errors import ConfigError, DataError

SHARED_DATA = Path("/work/shared/data")
N_TRAIN, N_TEST = 30, 10


# ---------------------------------------------------------------- writers of raw files


def _idx(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_folder(raw: Path, *, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny MNIST-style raw folder; returns the arrays written, keyed by file stem."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, n, dtype=np.uint8)
    raw.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = _idx(0x803 if array.ndim == 3 else 0x801, array)
        if gz:
            (raw / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / stem).write_bytes(data)
    return arrays


def _write_cifar_folder(
    folder: Path, names: list[str], label_key: bytes, num_classes: int, n: int = 4
) -> dict[str, dict[bytes, object]]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in names:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, num_classes, n).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
        batches[name] = batch
    return batches


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _trust(monkeypatch, base: Path) -> None:
    """Make the files under `base` (laid out like a data root) the 'official' ones."""
    for path in _files(base):
        monkeypatch.setitem(download.MD5, path.relative_to(base).as_posix(), _md5(path))


CIFAR10_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


# ---------------------------------------------------------------- MNIST family


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize(
    ("name", "folder", "mean", "std"),
    [
        ("mnist", "MNIST", 0.1307, 0.3081),
        ("fashion_mnist", "FashionMNIST", 0.2860, 0.3530),
    ],
)
def test_idx_dataset_loads(tmp_path, monkeypatch, name, folder, mean, std, gz):
    arrays = _write_idx_folder(tmp_path / folder / "raw", gz=gz)
    _trust(monkeypatch, tmp_path)
    data = load_dataset(name, tmp_path, download=False, val_size=0, mirror="")
    assert (data.name, data.num_classes, data.input_shape, data.augment) == (
        name,
        10,
        (1, 28, 28),
        None,
    )
    assert data.train_x.shape == (N_TRAIN, 1, 28, 28) and data.train_x.dtype == torch.float32
    assert data.val_x.shape == (0, 1, 28, 28) and data.val_y.shape == (0,)
    expected = (torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255 - mean) / std
    torch.testing.assert_close(data.test_x[:, 0], expected)
    assert data.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert data.train_y.dtype == torch.int64


def test_mixed_gz_and_plain_files_load(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    arrays = _write_idx_folder(raw, gz=True)
    gz_file = raw / "train-labels-idx1-ubyte.gz"
    (raw / "train-labels-idx1-ubyte").write_bytes(gzip.decompress(gz_file.read_bytes()))
    gz_file.unlink()
    _trust(monkeypatch, tmp_path)
    data = load_dataset("mnist", tmp_path, download=False, val_size=0, mirror="")
    assert data.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()


def test_corrupt_magic_raises_naming_the_file(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_folder(raw, gz=False)
    bad = raw / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01" + bad.read_bytes()[4:])
    _trust(monkeypatch, tmp_path)  # the readers' own checks, behind a matching checksum
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*magic 0x00000801"):
        load_dataset("mnist", tmp_path, download=False, mirror="")


def test_truncated_idx_raises(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_folder(raw, gz=False)
    bad = raw / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-5])
    _trust(monkeypatch, tmp_path)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte is truncated"):
        load_dataset("mnist", tmp_path, download=False, mirror="")


def test_cache_is_used_and_invalidated_when_raw_files_change(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_folder(raw, gz=True, seed=0)
    _trust(monkeypatch, tmp_path)
    first = load_dataset("mnist", tmp_path, download=False, val_size=0, mirror="")
    cache = tmp_path / "MNIST" / "processed" / CACHE_NAME
    assert cache.is_file()
    again = load_dataset("mnist", tmp_path, download=False, val_size=0, mirror="")
    assert torch.equal(first.train_x, again.train_x)

    arrays = _write_idx_folder(raw, gz=True, seed=1)  # rewritten in place: same inode
    labels = raw / "train-labels-idx1-ubyte.gz"
    mtime = labels.stat().st_mtime_ns + 10**9  # as if a second passed, whatever the clock says
    os.utime(labels, ns=(mtime, mtime))
    _trust(monkeypatch, tmp_path)
    changed = load_dataset("mnist", tmp_path, download=False, val_size=0, mirror="")
    assert changed.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()


def test_unreadable_cache_is_rebuilt(tmp_path, monkeypatch):
    _write_idx_folder(tmp_path / "MNIST" / "raw", gz=True)
    _trust(monkeypatch, tmp_path)
    cache = tmp_path / "MNIST" / "processed" / CACHE_NAME
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not a torch file")
    assert len(load_dataset("mnist", tmp_path, download=False, mirror="").test_y) == N_TEST
    assert cache.stat().st_size > 100


# ---------------------------------------------------------------- CIFAR


def test_cifar10_loads_with_channel_normalisation(tmp_path, monkeypatch):
    batches = _write_cifar_folder(tmp_path / "cifar-10-batches-py", CIFAR10_NAMES, b"labels", 10)
    _trust(monkeypatch, tmp_path)
    data = load_dataset("cifar10", tmp_path, download=False, val_size=0, mirror="")
    assert (data.num_classes, data.input_shape, data.augment) == (10, (3, 32, 32), "crop_flip")
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    test = batches["test_batch"]
    pixels = torch.from_numpy(test[b"data"]).reshape(4, 3, 32, 32).float() / 255
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    torch.testing.assert_close(data.test_x, (pixels - mean) / std)
    assert data.test_y.tolist() == test[b"labels"]
    train_labels = sum((batches[n][b"labels"] for n in CIFAR10_NAMES[:-1]), [])
    assert data.train_y.tolist() == train_labels
    assert load_dataset("cifar10", tmp_path, download=False, augment=False).augment is None


def test_cifar100_uses_fine_labels(tmp_path, monkeypatch):
    batches = _write_cifar_folder(
        tmp_path / "cifar-100-python", ["train", "test"], b"fine_labels", 100, n=6
    )
    _trust(monkeypatch, tmp_path)
    data = load_dataset("cifar100", tmp_path, download=False, val_size=0, mirror="")
    assert data.num_classes == 100
    assert data.train_y.tolist() == batches["train"][b"fine_labels"]


def test_cifar_tarball_from_mirror_is_verified_and_extracted_safely(tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    _write_cifar_folder(staging / "cifar-10-batches-py", CIFAR10_NAMES, b"labels", 10)
    (tmp_path / "evil_source").write_bytes(b"x")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        tar.add(tmp_path / "evil_source", arcname="../evil")
    root = tmp_path / "root"

    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("cifar10", root, mirror=str(mirror), download=False)
    assert _files(root) == []

    monkeypatch.setitem(download.MD5, "cifar-10-python.tar.gz", _md5(archive))
    with pytest.raises(DataError, match="mismatch for cifar-10-batches-py/data_batch_1 in .*tar"):
        load_dataset("cifar10", root, mirror=str(mirror), download=False)
    assert _files(root / "cifar-10-batches-py") == []  # the archive passed, its batches did not

    _trust(monkeypatch, staging)
    data = load_dataset("cifar10", root, mirror=str(mirror), download=False, val_size=0)
    assert len(data.train_y) == 20
    assert not (tmp_path / "evil").exists()
    extracted = (root / "cifar-10-batches-py").iterdir()
    assert sorted(p.name for p in extracted if p.is_file()) == sorted(CIFAR10_NAMES)


def test_cifar_extracted_folder_in_mirror_is_copied(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    _write_cifar_folder(mirror / "cifar-100-python", ["train", "test"], b"fine_labels", 100)
    _trust(monkeypatch, mirror)
    data = load_dataset("cifar100", tmp_path / "root", mirror=str(mirror), download=False)
    assert len(data.test_y) == 4


# ---------------------------------------------------------------- mirror and download


@pytest.fixture
def mnist_mirror(tmp_path, monkeypatch) -> Path:
    """A mirror with tiny gzipped MNIST files whose MD5s replace the official ones."""
    mirror = tmp_path / "mirror"
    _write_idx_folder(mirror / "MNIST" / "raw", gz=True)
    for path in (mirror / "MNIST" / "raw").iterdir():
        monkeypatch.setitem(download.MD5, f"MNIST/raw/{path.name}", _md5(path))
    return mirror


def test_mirror_copy_is_verified_and_leaves_the_mirror_alone(tmp_path, mnist_mirror):
    before = _files(mnist_mirror)
    root = tmp_path / "root"
    data = load_dataset("mnist", root, mirror=str(mnist_mirror), download=False)
    assert len(data.test_y) == N_TEST
    for path in before:
        assert (root / path.relative_to(mnist_mirror)).read_bytes() == path.read_bytes()
    assert _files(mnist_mirror) == before


def test_mirror_can_be_the_dataset_folder_itself(tmp_path, mnist_mirror):
    data = load_dataset(
        "mnist", tmp_path / "root", mirror=str(mnist_mirror / "MNIST"), download=False
    )
    assert len(data.test_y) == N_TEST


def test_mirror_from_environment_variable(tmp_path, mnist_mirror, monkeypatch):
    monkeypatch.setenv(download.MIRROR_ENV, str(mnist_mirror))
    assert len(load_dataset("mnist", tmp_path / "root", download=False).test_y) == N_TEST


def test_mirror_md5_mismatch_is_rejected_and_nothing_left_behind(tmp_path):
    mirror = tmp_path / "mirror"
    _write_idx_folder(mirror / "MNIST" / "raw", gz=True)  # not the official files
    root = tmp_path / "root"
    with pytest.raises(DataError, match="checksum mismatch.*expected f68b3c2d"):
        load_dataset("mnist", root, mirror=str(mirror), download=False)
    assert _files(root) == []


def test_missing_file_without_mirror_or_download_names_file_and_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz") in message
    for hint in ("data.mirror", download.MIRROR_ENV, "download"):
        assert hint in message
    assert isinstance(err.value, ConfigError)


class _FakeResponse(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def test_download_is_verified(tmp_path, mnist_mirror, monkeypatch):
    served = []

    def urlopen(url, timeout):
        served.append(url)
        return _FakeResponse((mnist_mirror / "MNIST" / "raw" / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(download.urllib.request, "urlopen", urlopen)
    data = load_dataset("mnist", tmp_path / "root", mirror="", download=True, val_size=0)
    assert len(data.train_y) == N_TRAIN
    assert served[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"


def test_network_failure_raises_data_error(tmp_path, monkeypatch):
    def urlopen(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(download.urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*no network"):
        load_dataset("mnist", tmp_path, mirror="", download=True)
    assert _files(tmp_path) == []


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="no shared MNIST")
def test_real_mnist_through_the_shared_mirror(tmp_path):
    data = load_dataset("mnist", tmp_path, mirror=str(SHARED_DATA), download=False, val_size=0)
    assert (len(data.train_y), len(data.test_y)) == (60000, 10000)
    assert abs(data.train_x.mean().item()) < 1e-3 and abs(data.train_x.std().item() - 1) < 1e-3
    for rel, md5 in download.DISTRIBUTED_MD5.items():
        if rel.startswith("MNIST/"):
            assert _md5(tmp_path / rel) == md5


def test_mirror_that_is_not_a_directory_raises(tmp_path):
    with pytest.raises(DataError, match="data mirror .*nowhere is not a directory"):
        load_dataset("mnist", tmp_path, mirror=str(tmp_path / "nowhere"), download=False)


# ---------------------------------------------------------------- verification before use


def _load_mnist(root: Path) -> DataSplits:
    return load_dataset("mnist", root, download=False, mirror="")


def _flip_byte(path: Path) -> None:
    """Change one byte in place: same size, same inode; only mtime and ctime move."""
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(content)


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """Every file hashed in place, in order (copies and downloads are hashed as they stream)."""
    calls: list[Path] = []
    real = integrity.file_md5

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(integrity, "file_md5", counting)
    return calls


@pytest.mark.parametrize("gz", [True, False])
def test_file_in_the_root_that_is_not_the_official_one_is_refused(tmp_path, gz):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_folder(raw, gz=gz)
    first = raw / ("train-images-idx3-ubyte.gz" if gz else "train-images-idx3-ubyte")
    with pytest.raises(DataError) as err:
        _load_mnist(tmp_path)
    message = str(err.value)
    expected = download.MD5[f"MNIST/raw/{first.name}"]
    assert f"checksum mismatch for {first}: md5 {_md5(first)}, expected {expected}" in message
    assert "delete it so it is fetched again" in message and "\n" not in message
    assert not (tmp_path / integrity.STAMP_NAME).exists()


def test_verification_is_stamped_and_redone_when_a_file_changes(tmp_path, monkeypatch, hashed):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_folder(raw, gz=True)
    _trust(monkeypatch, tmp_path)
    labels = raw / "train-labels-idx1-ubyte.gz"
    official = _md5(labels)

    _load_mnist(tmp_path)
    assert sorted(hashed) == sorted(raw.iterdir())
    stamp = json.loads((tmp_path / integrity.STAMP_NAME).read_text())
    st = labels.stat()
    assert stamp["version"] == integrity.STAMP_VERSION
    assert stamp["files"]["MNIST/raw/train-labels-idx1-ubyte.gz"] == {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
        "md5": official,
    }

    hashed.clear()
    _load_mnist(tmp_path)
    assert hashed == []  # the second job trusts the stamp

    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched
    _load_mnist(tmp_path)
    assert hashed == [labels]

    hashed.clear()
    st = labels.stat()
    _flip_byte(labels)
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: ctime still moved
    for _ in range(2):  # a failed check is never stamped
        with pytest.raises(DataError, match=f"checksum mismatch for {labels}: md5 {_md5(labels)}, "
                           f"expected {official}; .*delete it"):
            _load_mnist(tmp_path)
    assert hashed == [labels, labels]


def test_copied_files_are_stamped_in_the_root_and_never_hashed_again(
    tmp_path, mnist_mirror, hashed
):
    root = tmp_path / "root"
    for _ in range(2):
        load_dataset("mnist", root, mirror=str(mnist_mirror), download=False)
    assert hashed == []  # hashed while copied, then trusted by the stamp
    stamped = json.loads((root / integrity.STAMP_NAME).read_text())["files"]
    assert sorted(stamped) == sorted(f"MNIST/raw/{p.name}" for p in (root / "MNIST/raw").iterdir())
    assert not list(mnist_mirror.rglob(integrity.STAMP_NAME))


def test_unreadable_stamp_only_costs_a_rehash(tmp_path, monkeypatch, hashed):
    _write_idx_folder(tmp_path / "MNIST" / "raw", gz=True)
    _trust(monkeypatch, tmp_path)
    (tmp_path / integrity.STAMP_NAME).write_text("{not json")
    assert len(_load_mnist(tmp_path).test_y) == N_TEST
    assert len(hashed) == 4
    assert len(json.loads((tmp_path / integrity.STAMP_NAME).read_text())["files"]) == 4


def test_download_that_does_not_match_is_discarded(tmp_path, monkeypatch):
    monkeypatch.setattr(
        download.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(b"not mnist")
    )
    with pytest.raises(DataError, match="checksum mismatch for https://.*/train-images-idx3-ubyte"
                       ".gz: md5 .*, expected f68b3c2d.*nothing was written"):
        load_dataset("mnist", tmp_path, mirror="", download=True)
    assert _files(tmp_path) == []


def test_every_file_a_loader_reads_has_a_known_md5():
    idx = [
        f"{folder}/raw/{stem}{ext}"
        for folder in ("MNIST", "FashionMNIST")
        for stem in download.IDX_STEMS
        for ext in (".gz", "")
    ]
    cifar = [f"{folder}/{name}" 
             for folder, names in download.CIFAR_MEMBERS.items() for name in names]
    assert {*idx, *cifar, *download.CIFAR_ARCHIVES.values()} <= set(download.MD5)
    assert set(download.URLS) == set(download.DISTRIBUTED_MD5)  # only what the authors serve


class _Payload:
    """Unpickling this writes a marker file: what a crafted batch would do, made harmless."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _crafted_batch(marker: Path) -> bytes:
    return pickle.dumps({b"data": _Payload(marker), b"labels": [0]})


def test_crafted_payload_is_live(tmp_path):
    """Guards the two tests below: plain pickle.loads really runs the payload."""
    pickle.loads(_crafted_batch(tmp_path / "probe"))
    assert (tmp_path / "probe").read_text() == "pwned"


@pytest.mark.parametrize("where", ["root", "mirror"])
def test_crafted_cifar_batch_is_refused_before_it_is_unpickled(tmp_path, monkeypatch, where):
    marker = tmp_path / "marker"
    root, mirror = tmp_path / "root", tmp_path / "mirror"
    folder = (root if where == "root" else mirror) / "cifar-10-batches-py"
    _write_cifar_folder(folder, CIFAR10_NAMES, b"labels", 10)
    (folder / "data_batch_1").write_bytes(_crafted_batch(marker))
    _trust(monkeypatch, folder.parent)
    official = download.EXTRACTED_MD5["cifar-10-batches-py/data_batch_1"]
    monkeypatch.setitem(download.MD5, "cifar-10-batches-py/data_batch_1", official)  # torchvision's
    with pytest.raises(DataError, match=f"for .*data_batch_1: md5 .*, expected {official}"):
        load_dataset(
            "cifar10", root, mirror=str(mirror) if where == "mirror" else "", download=False
        )
    assert not marker.exists()
    if where == "mirror":
        assert not (root / "cifar-10-batches-py" / "data_batch_1").exists()


def test_restricted_unpickler_refuses_a_crafted_batch_whose_md5_matches(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    folder = tmp_path / "cifar-100-python"
    _write_cifar_folder(folder, ["train", "test"], b"fine_labels", 100)
    (folder / "train").write_bytes(_crafted_batch(marker))
    _trust(monkeypatch, tmp_path)  # as if the checksum table itself had been subverted
    with pytest.raises(DataError, match="train is not a readable CIFAR batch.*forbidden global "
                       "builtins.exec"):
        load_dataset("cifar100", tmp_path, download=False, mirror="")
    assert not marker.exists()


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_restricted_unpickler_reads_batches_as_distributed(tmp_path, module):
    """The official batches are Python 2 pickles naming numpy.core.multiarray._reconstruct;
    numpy 2 writes numpy._core. Protocol 3 spells globals as text lines, so both can be made."""
    data = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    payload = pickle.dumps({b"data": data, b"labels": [1, 2, 3]}, protocol=3)
    path = tmp_path / "batch"
    path.write_bytes(payload.replace(b"numpy._core.multiarray\n", module.encode() + b"\n"))
    assert module.encode() in path.read_bytes()
    images, labels = read_cifar_batch(path, b"labels")
    assert torch.equal(images.flatten(1), torch.from_numpy(data)) and labels.tolist() == [1, 2, 3]


@pytest.mark.skipif(
    not (SHARED_DATA / "FashionMNIST" / "raw").is_dir(), reason="no shared Fashion-MNIST"
)
def test_real_fashion_mnist_in_the_root_is_verified_and_a_flipped_byte_caught(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for source in (SHARED_DATA / "FashionMNIST" / "raw").glob("*.gz"):
        shutil.copyfile(source, raw / source.name)  # not copytree: the mirror is read-only
    data = load_dataset("fashion_mnist", tmp_path, mirror="", download=False, val_size=0)
    assert (len(data.train_y), len(data.test_y)) == (60000, 10000)

    labels = raw / "train-labels-idx1-ubyte.gz"
    _flip_byte(labels)
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", tmp_path, mirror="", download=False)
    assert str(err.value).startswith(
        f"checksum mismatch for {labels}: md5 {_md5(labels)}, "
        "expected 25c81989df183df01b3e8a0aad5dffbe; "
    )


@pytest.mark.parametrize("folder", ["MNIST", "FashionMNIST"])
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="no shared data")
def test_recorded_md5s_of_decompressed_idx_files_match_the_real_ones(folder):
    sources = sorted((SHARED_DATA / folder / "raw").glob("*.gz"))
    if not sources:
        pytest.skip(f"no shared {folder}")
    for source in sources:
        rel = f"{folder}/raw/{source.name}"
        assert _md5(source) == download.DISTRIBUTED_MD5[rel]
        plain = hashlib.md5(gzip.decompress(source.read_bytes())).hexdigest()
        assert plain == download.EXTRACTED_MD5[rel.removesuffix(".gz")]


# ---------------------------------------------------------------- digits, splits, API


def test_digits_fixed_split():
    data = load_dataset("digits", val_size=0)
    assert (len(data.train_y), len(data.test_y)) == (1437, 360)
    assert data.input_shape == (1, 8, 8)
    assert torch.bincount(data.test_y).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]
    # Normalisation constants come from this very train split.
    assert abs(data.train_x.mean().item()) < 1e-3 and abs(data.train_x.std().item() - 1) < 1e-3
    again = load_dataset("digits", val_size=0.2)
    assert torch.equal(data.test_x, again.test_x)
    assert len(again.train_y) + len(again.val_y) == 1437


def test_val_split_is_disjoint_deterministic_and_sized():
    full = load_dataset("digits", val_size=0)
    data = load_dataset("digits", val_size=0.1)
    assert (len(data.train_y), len(data.val_y)) == (1293, 144)
    rows = {tuple(r.tolist()) for r in full.train_x.flatten(1)}
    train = {tuple(r.tolist()) for r in data.train_x.flatten(1)}
    val = {tuple(r.tolist()) for r in data.val_x.flatten(1)}
    assert train | val <= rows and not train & val
    assert torch.equal(data.val_x, load_dataset("digits", val_size=0.1).val_x)
    assert len(load_dataset("digits", val_size=100).val_y) == 100


@pytest.mark.parametrize("val_size", [-0.1, 1.0, 1437, -1, True, "0.1"])
def test_bad_val_size_raises(val_size):
    with pytest.raises(ConfigError, match="data.val_size"):
        load_dataset("digits", val_size=val_size)


def test_unknown_dataset_and_bad_augment_raise():
    with pytest.raises(
        ConfigError, match="unknown dataset 'x' \\(key data.name\\); allowed: digits, mnist"
    ):
        load_dataset("x")
    with pytest.raises(ConfigError, match="data.augment"):
        load_dataset("digits", augment=True)
    assert DATASETS.names() == ["digits", "mnist", "fashion_mnist", "cifar10", "cifar100"]


def test_data_splits_to_and_split():
    data = load_dataset("digits")
    moved = data.to("meta")
    assert moved.train_x.device.type == "meta" and data.train_x.device.type == "cpu"
    assert isinstance(moved, DataSplits) and moved.num_classes == 10
    x, y = data.split("val")
    assert x is data.val_x and y is data.val_y
    with pytest.raises(ConfigError, match="allowed: train, val, test"):
        data.split("holdout")


# ---------------------------------------------------------------- batching


def test_num_batches():
    assert [num_batches(10, 3), num_batches(10, 3, drop_last=True), num_batches(9, 3)] == [4, 3, 3]
    with pytest.raises(ValueError):
        num_batches(10, 0)


def _epoch(seed: int, **kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x = torch.arange(23 * 2, dtype=torch.float32).view(23, 2)
    y = torch.arange(23)
    gen = torch.Generator().manual_seed(seed)
    return list(iterate_batches(x, y, 5, shuffle=True, generator=gen, **kwargs))


def test_shuffled_epoch_covers_every_index_once_and_is_seeded():
    batches = _epoch(0)
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == list(range(23)) and labels.tolist() != list(range(23))
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    for x, y in batches:
        assert torch.equal(x[:, 0], y.float() * 2)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, _epoch(0), strict=True))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(batches, _epoch(1), strict=True))
    assert [len(y) for _, y in _epoch(0, drop_last=True)] == [5, 5, 5, 5]


def test_unshuffled_batches_are_in_order_and_augmented_when_asked():
    x = torch.randn(7, 3, 8, 8)
    batches = list(iterate_batches(x, torch.arange(7), 4))
    assert torch.equal(torch.cat([b for b, _ in batches]), x)
    gen = torch.Generator().manual_seed(0)
    augmented = list(iterate_batches(x, torch.arange(7), 4, augment="crop_flip", generator=gen))
    assert augmented[0][0].shape == (4, 3, 8, 8)
    with pytest.raises(ConfigError, match="unknown augmentation"):
        iterate_batches(x, torch.arange(7), 4, augment="cutout")


def _crop_params(
    sample: torch.Tensor, padded: torch.Tensor, padding: int
) -> tuple[int, int, bool] | None:
    """Per-sample reference: the (top, left, flipped) crop of `padded` equal to `sample`."""
    h, w = sample.shape[-2:]
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[:, top : top + h, left : left + w]
            for flipped in (False, True):
                if torch.equal(sample, crop.flip(-1) if flipped else crop):
                    return top, left, flipped
    return None


def test_random_crop_flip_is_a_real_crop_and_flip_and_seeded():
    x = torch.randn(64, 3, 6, 5)
    out = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    params = [_crop_params(out[i], padded[i], 2) for i in range(len(x))]
    assert None not in params
    assert {p[2] for p in params} == {False, True}
    assert len({p[:2] for p in params}) > 10  # offsets vary per sample
    again = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    other = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(out, other)


def test_random_crop_flip_without_padding_only_flips():
    x = torch.randn(16, 1, 4, 4)
    out = random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(o, s) or torch.equal(o, s.flip(-1)) for o, s in zip(out, x, strict=True))
