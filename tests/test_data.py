"""Data loading, fetching and batching, on tiny files written by the tests themselves."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
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
    iterate_batches,
    load_dataset,
    num_batches,
    random_crop_flip,
)
from prunebench.data.cache import CACHE_NAME
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
def test_idx_dataset_loads(tmp_path, name, folder, mean, std, gz):
    arrays = _write_idx_folder(tmp_path / folder / "raw", gz=gz)
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


def test_mixed_gz_and_plain_files_load(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    arrays = _write_idx_folder(raw, gz=True)
    gz_file = raw / "train-labels-idx1-ubyte.gz"
    (raw / "train-labels-idx1-ubyte").write_bytes(gzip.decompress(gz_file.read_bytes()))
    gz_file.unlink()
    data = load_dataset("mnist", tmp_path, download=False, val_size=0, mirror="")
    assert data.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()


def test_corrupt_magic_raises_naming_the_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_folder(raw, gz=False)
    bad = raw / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01" + bad.read_bytes()[4:])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*magic 0x00000801"):
        load_dataset("mnist", tmp_path, download=False, mirror="")


def test_truncated_idx_raises(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_folder(raw, gz=False)
    bad = raw / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte is truncated"):
        load_dataset("mnist", tmp_path, download=False, mirror="")


def test_cache_is_used_and_invalidated_when_raw_files_change(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_folder(raw, gz=True, seed=0)
    first = load_dataset("mnist", tmp_path, download=False, val_size=0, mirror="")
    cache = tmp_path / "MNIST" / "processed" / CACHE_NAME
    assert cache.is_file()
    again = load_dataset("mnist", tmp_path, download=False, val_size=0, mirror="")
    assert torch.equal(first.train_x, again.train_x)

    arrays = _write_idx_folder(raw, gz=True, seed=1)  # rewritten in place: same inode
    labels = raw / "train-labels-idx1-ubyte.gz"
    mtime = labels.stat().st_mtime_ns + 10**9  # as if a second passed, whatever the clock says
    os.utime(labels, ns=(mtime, mtime))
    changed = load_dataset("mnist", tmp_path, download=False, val_size=0, mirror="")
    assert changed.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()


def test_unreadable_cache_is_rebuilt(tmp_path):
    _write_idx_folder(tmp_path / "MNIST" / "raw", gz=True)
    cache = tmp_path / "MNIST" / "processed" / CACHE_NAME
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not a torch file")
    assert len(load_dataset("mnist", tmp_path, download=False, mirror="").test_y) == N_TEST
    assert cache.stat().st_size > 100


# ---------------------------------------------------------------- CIFAR


def test_cifar10_loads_with_channel_normalisation(tmp_path):
    batches = _write_cifar_folder(tmp_path / "cifar-10-batches-py", CIFAR10_NAMES, b"labels", 10)
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


def test_cifar100_uses_fine_labels(tmp_path):
    batches = _write_cifar_folder(
        tmp_path / "cifar-100-python", ["train", "test"], b"fine_labels", 100, n=6
    )
    data = load_dataset("cifar100", tmp_path, download=False, val_size=0, mirror="")
    assert data.num_classes == 100
    assert data.train_y.tolist() == batches["train"][b"fine_labels"]


def test_cifar_tarball_from_mirror_is_verified_and_extracted_safely(tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    _write_cifar_folder(staging / "cifar-10-batches-py", CIFAR10_NAMES, b"labels", 10)
    (staging / "evil").write_bytes(b"x")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = mirror / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        tar.add(staging / "evil", arcname="../evil")
    root = tmp_path / "root"

    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset("cifar10", root, mirror=str(mirror), download=False)
    assert _files(root) == []

    monkeypatch.setitem(download.MD5, "cifar-10-python.tar.gz", _md5(archive))
    data = load_dataset("cifar10", root, mirror=str(mirror), download=False, val_size=0)
    assert len(data.train_y) == 20
    assert not (tmp_path / "evil").exists()
    extracted = (root / "cifar-10-batches-py").iterdir()
    assert sorted(p.name for p in extracted if p.is_file()) == sorted(CIFAR10_NAMES)


def test_cifar_extracted_folder_in_mirror_is_copied(tmp_path):
    mirror = tmp_path / "mirror"
    _write_cifar_folder(mirror / "cifar-100-python", ["train", "test"], b"fine_labels", 100)
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
    for rel, md5 in download.MD5.items():
        if rel.startswith("MNIST/"):
            assert _md5(tmp_path / rel) == md5


def test_mirror_that_is_not_a_directory_raises(tmp_path):
    with pytest.raises(DataError, match="data mirror .*nowhere is not a directory"):
        load_dataset("mnist", tmp_path, mirror=str(tmp_path / "nowhere"), download=False)


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
    assert DATASETS == ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100")


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
