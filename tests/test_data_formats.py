"""The generic dataset formats (image folder, NumPy arrays), on data the tests write themselves."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from prunebench.config import TrainConfig
from prunebench.data import (
    DATASETS,
    DatasetEntry,
    FileDataset,
    dataset_fingerprint,
    dataset_shape,
    format_dataset,
    generic,
    image_folder,
    iterate_batches,
    load_dataset,
    numpy_arrays,
    register_dataset,
    register_format_dataset,
    source,
)
from prunebench.data.datasets import val_split
from prunebench.data.imagefolder import ImageFolder
from prunebench.data.streaming import SampleSet, stream_batches
from prunebench.errors import ConfigError, DataError
from prunebench.training import evaluate_splits, train
from prunebench.training.loop import epoch_generator

CLASSES = {"cat": (4, 2), "dog": (3, 2), "emu": (3, 1)}  # train, test images per class
HEIGHT, WIDTH = 5, 7


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """Entries registered by a test vanish after it."""
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))


def write_image_folder(root: Path, *, mode: str = "RGB", size=(HEIGHT, WIDTH), suffix=".png",
                       classes=CLASSES, seed: int = 0) -> dict[str, np.ndarray]:
    """A folder of random images; returns each file's pixels (H, W[, 3]) by relative path."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, column in (("train", 0), ("test", 1)):
        for name, counts in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(counts[column]):
                shape = size if mode == "L" else (*size, 3)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                rel = f"{split}/{name}/{i:02d}{suffix}"
                Image.fromarray(pixels).save(root / rel)  # 2-D: "L", 3-D: "RGB"
                written[rel] = pixels
    return written


def as_chw(pixels: np.ndarray) -> np.ndarray:
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def stacked(written: dict[str, np.ndarray], split: str) -> np.ndarray:
    """The split's images in the reading order (class by class, files sorted), (N, C, H, W)."""
    return np.stack([as_chw(written[rel]) for rel in sorted(written) if rel.startswith(split)])


def labels_of(written: dict[str, np.ndarray], split: str) -> list[int]:
    names = sorted(CLASSES)
    return [names.index(rel.split("/")[1]) for rel in sorted(written) if rel.startswith(split)]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "shapes"
    return root, write_image_folder(root)


def test_image_folder_shape_reads_one_header_and_decodes_nothing(folder, monkeypatch):
    root, _ = folder
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(path) or
                        real_open(path, *a, **k))
    monkeypatch.setattr(ImageFolder, "_decode", lambda *a: pytest.fail("decoded an image"))
    entry = image_folder("shapes", root)
    assert entry.shape() == (3, (3, HEIGHT, WIDTH))
    assert opened == [root / "train" / "cat" / "00.png"]  # one header, per call
    assert (entry.num_classes, entry.input_shape) == (3, (3, HEIGHT, WIDTH))
    assert image_folder("grey", root, mode="L", size=4).shape() == (3, (1, 4, 4))
    assert image_folder("wide", root, size=(2, 9)).shape() == (3, (3, 2, 9))
    assert isinstance(entry, DatasetEntry)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_image_pixels_and_labels_survive_the_round_trip(tmp_path, mode):
    written = write_image_folder(tmp_path / "d", mode=mode)
    entry = image_folder("d", tmp_path / "d", mean=0.0, std=1.0)
    data = entry.load(val_size=0)
    channels = 1 if mode == "L" else 3
    assert (data.num_classes, data.input_shape) == (3, (channels, HEIGHT, WIDTH))
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    expected_train = torch.from_numpy(stacked(written, "train")).float() / 255
    torch.testing.assert_close(data.train_x, expected_train, rtol=0, atol=0)
    torch.testing.assert_close(data.test_x, torch.from_numpy(stacked(written, "test")) / 255.0)
    assert data.train_y.tolist() == labels_of(written, "train")
    assert data.test_y.tolist() == labels_of(written, "test")
    assert len(data.val_y) == 0 and data.augment is None


def test_mode_and_size_options_convert_every_image(tmp_path):
    written = write_image_folder(tmp_path / "d", suffix=".PNG")
    grey = image_folder("grey", tmp_path / "d", mode="L", mean=0, std=1).load(val_size=0)
    first = Image.fromarray(written["train/cat/00.PNG"]).convert("L")
    assert grey.input_shape == (1, HEIGHT, WIDTH)
    assert torch.equal(grey.train_x[0, 0], torch.from_numpy(np.array(first)) / 255.0)
    small = image_folder("small", tmp_path / "d", size=(3, 4), mean=0, std=1).load(val_size=0)
    resized = Image.fromarray(written["train/cat/00.PNG"]).resize((4, 3), Image.Resampling.BILINEAR)
    assert small.train_x.shape == (10, 3, 3, 4)
    assert torch.equal(small.train_x[0], torch.from_numpy(as_chw(np.array(resized))) / 255.0)


def test_jpeg_and_mixed_suffixes_are_read_and_other_files_skipped(tmp_path):
    root = tmp_path / "d"
    write_image_folder(root, suffix=".jpg", classes={"a": (2, 1), "b": (2, 1)})
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    (root / "train" / "a" / ".hidden.png").write_bytes(b"junk")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(root / "train" / "b" / "z.jpeg")
    data = image_folder("d", root).load(val_size=0)
    assert data.num_classes == 2 and data.train_y.tolist() == [0, 0, 1, 1, 1]
    assert data.train_x.shape == (5, 3, HEIGHT, WIDTH)


def test_statistics_match_a_direct_computation_and_are_cached(folder, monkeypatch):
    root, written = folder
    entry = image_folder("shapes", root)
    data = entry.load(val_size=3)
    pixels = stacked(written, "train").astype(np.float64) / 255  # the whole train folder
    mean, std = pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3))
    np.testing.assert_allclose(entry.statistics()[0], mean, rtol=1e-12)
    np.testing.assert_allclose(entry.statistics()[1], std, rtol=1e-12)
    test = torch.from_numpy((stacked(written, "test") / 255 - mean[:, None, None])
                            / std[:, None, None]).float()
    torch.testing.assert_close(data.test_x, test)
    sidecar = root.parent / "shapes.prunebench.json"
    assert sidecar.is_file() and not (root / "shapes.prunebench.json").exists()

    def no_recomputing(*args, **kwargs):
        raise AssertionError("statistics computed again")

    monkeypatch.setattr(generic, "channel_stats", no_recomputing)
    again = image_folder("shapes", root).load(val_size=3)
    assert torch.equal(again.test_x, data.test_x) and torch.equal(again.val_x, data.val_x)
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(root / "train/dog/00.png")
    with pytest.raises(AssertionError, match="computed again"):
        image_folder("shapes", root).load()


def test_given_statistics_are_used_and_never_computed(folder, monkeypatch):
    root, written = folder
    monkeypatch.setattr(generic, "channel_stats", lambda *a, **k: pytest.fail("computed"))
    data = image_folder("s", root, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.25]).load(val_size=0)
    expected = (stacked(written, "train") / 255 - np.array([0.5, 0.4, 0.3])[:, None, None]) \
        / np.array([0.2, 0.2, 0.25])[:, None, None]
    torch.testing.assert_close(data.train_x, torch.from_numpy(expected).float())
    assert not (root.parent / "shapes.prunebench.json").exists()
    with pytest.raises(ConfigError, match="2 means and stds for inputs of shape"):
        image_folder("s", root, mean=[0.5, 0.5], std=[0.2, 0.2]).shape()


def test_decoded_images_are_cached_until_an_image_changes(folder, monkeypatch):
    root, _ = folder
    first = image_folder("shapes", root).load(val_size=0)
    monkeypatch.setattr(ImageFolder, "_decode", lambda *a: pytest.fail("decoded again"))
    assert torch.equal(image_folder("shapes", root).load(val_size=0).train_x, first.train_x)
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(root / "test/emu/00.png")
    with pytest.raises(pytest.fail.Exception, match="decoded again"):
        image_folder("shapes", root).load(val_size=0)


def test_validation_split_is_the_built_in_one(folder):
    root, written = folder
    data = image_folder("shapes", root, mean=0, std=1).load(val_size=0.3)
    train_idx, val_idx = val_split(10, 0.3)
    pixels = torch.from_numpy(stacked(written, "train")) / 255.0
    assert torch.equal(data.val_x, pixels[val_idx]) and torch.equal(data.train_x, pixels[train_idx])
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (7, 3, 5)


def test_fingerprint_is_stable_cached_and_changes_with_any_file(folder, tmp_path, monkeypatch):
    root, _ = folder
    entry = image_folder("shapes", root)
    fp = entry.fingerprint()
    assert isinstance(fp, str) and len(fp) == 16
    assert image_folder("shapes", root).fingerprint() == fp == dataset_fingerprint(entry)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, copy)  # new inodes: hashed again, to the same content hash
    assert image_folder("shapes", copy).fingerprint() == fp
    assert image_folder("shapes", root, mode="L").fingerprint() != fp  # options count too

    with monkeypatch.context() as patch:
        patch.setattr(source, "file_sha256", lambda path: pytest.fail(f"hashed {path}"))
        assert entry.fingerprint() == fp  # cached next to the data
    pixels = np.asarray(Image.open(root / "test/dog/01.png")).copy()
    pixels[0, 0, 0] ^= 1
    Image.fromarray(pixels).save(root / "test/dog/01.png")
    changed = entry.fingerprint()
    assert changed != fp and entry.fingerprint() == changed


def test_built_in_datasets_have_no_fingerprint():
    assert dataset_fingerprint("digits") is None
    assert DATASETS.get("mnist").fingerprint() is None


# ---------------------------------------------------------------- bad image folders


def _corrupt(root: Path) -> Path:
    path = root / "train/dog/01.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    return path


def _truncated(root: Path) -> Path:
    path = root / "test/cat/01.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8)) \
        .resize((WIDTH, HEIGHT)).save(path)
    path.write_bytes(path.read_bytes()[:-30])
    return path


def _other_size(root: Path) -> Path:
    path = root / "train/emu/02.png"
    Image.fromarray(np.zeros((HEIGHT + 1, WIDTH, 3), np.uint8)).save(path)
    return path


def _other_mode(root: Path) -> Path:
    path = root / "test/dog/00.png"
    Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint8)).save(path)  # mode "L"
    return path


def _empty_class(root: Path) -> Path:
    path = root / "train" / "fox"
    path.mkdir()
    (path / "readme.txt").write_text("no images here")
    return path


def _empty_test_class(root: Path) -> Path:
    path = root / "test" / "cat"
    shutil.rmtree(path)
    path.mkdir()
    return path


def _unknown_test_class(root: Path) -> Path:
    shutil.copytree(root / "test" / "cat", root / "test" / "yak")
    return root / "test" / "yak"


def _no_test_folder(root: Path) -> Path:
    shutil.rmtree(root / "test")
    return root / "test"


def _no_classes(root: Path) -> Path:
    shutil.rmtree(root / "train")
    (root / "train").mkdir()
    return root / "train"


@pytest.mark.parametrize("damage, at_shape", [
    (_corrupt, False), (_truncated, False), (_other_size, False), (_other_mode, False),
    (_empty_class, True), (_empty_test_class, True), (_unknown_test_class, True),
    (_no_test_folder, True), (_no_classes, True),
])
def test_bad_image_folders_are_refused_in_one_line_naming_the_file(folder, damage, at_shape):
    root, _ = folder
    bad = damage(root)
    entry = image_folder("shapes", root)
    checks = [entry.shape, entry.load] if at_shape else [entry.load]
    for check in checks:
        with pytest.raises(ConfigError) as info:
            check()
        assert isinstance(info.value, DataError)
        message = str(info.value)
        assert str(bad) in message and "\n" not in message, message
    if not at_shape:
        assert entry.shape()[0] == 3  # the cheap checks cannot see it


def test_other_sizes_and_modes_are_fine_when_size_and_mode_are_given(folder):
    root, _ = folder
    _other_size(root)
    _other_mode(root)
    data = image_folder("shapes", root, mode="RGB", size=(HEIGHT, WIDTH)).load(val_size=0)
    assert data.train_x.shape == (10, 3, HEIGHT, WIDTH)


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "CMYK"}, "mode must be one of L, RGB"),
    ({"size": (0, 3)}, "size must be a positive integer or \\[height, width\\]"),
    ({"size": [1, 2, 3]}, "size must be"),
    ({"mean": 0.5}, "give both mean and std"),
    ({"mean": [0.5], "std": [0.0]}, "std must be positive"),
    ({"mean": [0.5, 0.2], "std": [0.1]}, "2 means but 1 stds"),
    ({"mean": ["a"], "std": [1]}, "mean must be a number"),
    ({"augment": "cutmix"}, "unknown augmentation 'cutmix'"),
])
def test_bad_options_are_refused_when_the_entry_is_made(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        image_folder("x", "nowhere", **kwargs)


def test_augmentation_default_and_override(folder):
    root, _ = folder
    entry = image_folder("shapes", root, augment="crop_flip")
    assert entry.load(val_size=0).augment == "crop_flip"
    assert entry.load(val_size=0, augment=False).augment is None
    with pytest.raises(ConfigError, match="has no augmentation"):
        image_folder("plain", root).load(augment=True)


def test_relative_paths_are_taken_from_the_working_directory(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "data" / "mine")
    monkeypatch.chdir(tmp_path)
    entry = image_folder("mine", "data/mine")
    assert entry.shape() == (3, (3, HEIGHT, WIDTH))
    assert len(entry.load(val_size=0).train_y) == 10
    assert (tmp_path / "data" / "mine.prunebench.json").is_file()


# ---------------------------------------------------------------- NumPy arrays


def make_arrays(n_train=20, n_test=6, sample=(8,), classes=3, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": (rng.normal(size=(n_train, *sample)) * 3 + 100).astype(np.float32),
        "y_train": rng.integers(0, classes, n_train),
        "x_test": (rng.normal(size=(n_test, *sample)) * 3 + 100).astype(np.float32),
        "y_test": rng.integers(0, classes, n_test),
    }


def save_arrays(path: Path, arrays: dict[str, np.ndarray], kind: str) -> Path:
    if kind == "npz":
        path = path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
    else:
        path.mkdir(parents=True, exist_ok=True)
        for name, array in arrays.items():
            np.save(path / f"{name}.npy", array)
    return path


@pytest.mark.parametrize("kind", ["npz", "npy"])
@pytest.mark.parametrize("sample", [(8,), (2, 6), (1, 4, 5)])
def test_numpy_arrays_of_any_rank_load_and_normalise(tmp_path, kind, sample):
    arrays = make_arrays(sample=sample)
    path = save_arrays(tmp_path / "seq", arrays, kind)
    entry = numpy_arrays("seq", path)
    assert entry.shape() == (int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1, sample)
    data = entry.load(val_size=4)
    x = arrays["x_train"].astype(np.float64)
    axes = None if len(sample) == 1 else (0, *range(2, x.ndim))
    mean, std = x.mean(axis=axes), x.std(axis=axes)
    np.testing.assert_allclose(entry.statistics()[0], np.atleast_1d(mean), rtol=1e-10)
    np.testing.assert_allclose(entry.statistics()[1], np.atleast_1d(std), rtol=1e-10)
    shape = (-1,) + (1,) * (len(sample) - 1)
    expected = (x - np.atleast_1d(mean).reshape(shape)) / np.atleast_1d(std).reshape(shape)
    train_idx, val_idx = val_split(20, 4)
    torch.testing.assert_close(data.train_x, torch.from_numpy(expected[train_idx.numpy()]).float())
    torch.testing.assert_close(data.val_x, torch.from_numpy(expected[val_idx.numpy()]).float())
    assert data.train_y.tolist() == arrays["y_train"][train_idx.numpy()].tolist()
    assert data.test_y.tolist() == arrays["y_test"].tolist()
    assert data.input_shape == sample and data.test_x.dtype == torch.float32


def test_npy_files_are_memory_mapped_and_integer_inputs_allowed(tmp_path):
    arrays = make_arrays(sample=(1, 3, 3))
    arrays["x_train"] = np.arange(20 * 9, dtype=np.uint8).reshape(20, 1, 3, 3)
    arrays["x_test"] = np.ones((6, 1, 3, 3), dtype=np.int16)
    path = save_arrays(tmp_path / "img", arrays, "npy")
    entry = numpy_arrays("img", path, num_classes=5, mean=10.0, std=2.0)
    assert isinstance(entry.source._array("x_train"), np.memmap)
    assert entry.shape() == (5, (1, 3, 3))
    data = entry.load(val_size=0)
    torch.testing.assert_close(data.train_x, (torch.from_numpy(arrays["x_train"]).float() - 10) / 2)
    assert torch.equal(data.test_x, torch.full((6, 1, 3, 3), -4.5))


def test_numpy_statistics_are_cached_and_fingerprint_follows_the_files(tmp_path, monkeypatch):
    arrays = make_arrays()
    path = save_arrays(tmp_path / "a", arrays, "npz")
    entry = numpy_arrays("a", path)
    first = entry.load(val_size=0)
    fp = entry.fingerprint()
    assert (tmp_path / "a.npz.prunebench.json").is_file()
    monkeypatch.setattr(generic, "channel_stats", lambda *a, **k: pytest.fail("recomputed"))
    assert torch.equal(numpy_arrays("a", path).load(val_size=0).train_x, first.train_x)
    assert numpy_arrays("a", path).fingerprint() == fp
    assert numpy_arrays("a", path, num_classes=7).fingerprint() != fp
    arrays["x_test"][0, 0] += 1
    save_arrays(tmp_path / "a", arrays, "npz")
    assert numpy_arrays("a", path).fingerprint() != fp


def _short_labels(arrays):
    arrays["y_train"] = arrays["y_train"][:-1]
    return "y_train", "shape (19,), expected one label per input"


def _labels_out_of_range(arrays):
    arrays["y_test"][2] = 3
    return "y_test", "..3 outside 0..2 (num_classes)"


def _negative_labels(arrays):
    arrays["y_train"][0] = -1
    return "y_train", "outside 0..2"


def _float_labels(arrays):
    arrays["y_test"] = arrays["y_test"].astype(np.float32)
    return "y_test", "labels must be integers"


def _two_dim_labels(arrays):
    arrays["y_train"] = arrays["y_train"][:, None]
    return "y_train", "shape (20, 1)"


def _other_sample_shape(arrays):
    arrays["x_test"] = arrays["x_test"][:, :5]
    return "x_test", "inputs of shape (5,), but x_train's are (8,)"


def _no_samples(arrays):
    arrays["x_test"], arrays["y_test"] = arrays["x_test"][:0], arrays["y_test"][:0]
    return "x_test", "N >= 1 samples"


def _complex_inputs(arrays):
    arrays["x_train"] = arrays["x_train"].astype(np.complex64)
    return "x_train", "inputs must be bool, integers or floats"


def _nan_inputs(arrays):
    arrays["x_train"][3, 1] = np.nan
    return "x_train", "NaN or infinite values"


def _nan_test_inputs(arrays):
    arrays["x_test"][1, 0] = np.inf
    return "x_test", "NaN or infinite values"


BAD_ARRAYS = [_short_labels, _labels_out_of_range, _negative_labels, _float_labels,
              _two_dim_labels, _other_sample_shape, _no_samples, _complex_inputs, _nan_inputs,
              _nan_test_inputs]


@pytest.mark.parametrize("kind", ["npz", "npy"])
@pytest.mark.parametrize("damage", BAD_ARRAYS)
def test_bad_arrays_are_refused_in_one_line_naming_the_file(tmp_path, kind, damage):
    arrays = make_arrays()
    part, match = damage(arrays)
    path = save_arrays(tmp_path / "bad", arrays, kind)
    entry = numpy_arrays("bad", path, num_classes=3)
    where = f"{path} (array {part})" if kind == "npz" else str(path / f"{part}.npy")
    cheap = "NaN" not in match
    for check in [entry.shape, entry.load] if cheap else [entry.load]:
        with pytest.raises(DataError) as info:
            check()
        message = str(info.value)
        assert message.startswith(where + ":") and match in message, message
        assert "\n" not in message


def test_missing_and_unreadable_arrays_are_named(tmp_path):
    arrays = make_arrays()
    del arrays["y_test"]
    path = save_arrays(tmp_path / "partial", arrays, "npz")
    for check in (numpy_arrays("p", path).shape, numpy_arrays("p", path).load):
        with pytest.raises(DataError, match=re.escape(
                f"{path}: no array 'y_test' (it has: x_test, x_train, y_train)")):
            check()
    folder = save_arrays(tmp_path / "dir", arrays, "npy")
    with pytest.raises(DataError, match=re.escape(f"{folder / 'y_test.npy'}: no such file")):
        numpy_arrays("d", folder).load()
    np.save(folder / "y_test.npy", np.zeros(6, np.int64))
    (folder / "x_test.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=re.escape(f"{folder / 'x_test.npy'}: not a readable")):
        numpy_arrays("d", folder).shape()
    (tmp_path / "fake.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="fake.npz \\(array x_train\\): not a readable"):
        numpy_arrays("f", tmp_path / "fake.npz").shape()
    with pytest.raises(DataError, match="nothing.npz: no such file"):
        numpy_arrays("n", tmp_path / "nothing.npz").shape()


def test_object_arrays_are_never_unpickled(tmp_path):
    arrays = make_arrays()
    arrays["x_train"] = np.array([object()] * 20, dtype=object)
    path = tmp_path / "obj.npz"
    np.savez(path, **arrays)
    for check in (numpy_arrays("o", path).shape, numpy_arrays("o", path).load):
        with pytest.raises(DataError, match="obj.npz \\(array x_train\\)"):
            check()


# ---------------------------------------------------------------- registry, params, training


def test_a_registered_image_folder_trains_end_to_end(folder):
    root, _ = folder
    register_dataset(image_folder("shapes", root))
    assert "shapes" in DATASETS and dataset_shape("shapes") == (3, (3, HEIGHT, WIDTH))
    data = load_dataset("shapes", val_size=2)
    assert isinstance(dataset_fingerprint("shapes"), str)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * HEIGHT * WIDTH, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    state = train(model, data, TrainConfig(epochs=1, batch_size=4, lr=0.05), seed=0,
                  progress=False)
    assert len(state.history) == 1 and np.isfinite(state.history[0]["train_loss"])
    metrics = evaluate_splits(model, data)
    assert 0.0 <= metrics["top1"] <= 1.0 and np.isfinite(metrics["val_loss"])


def test_a_params_file_description_registers_once(folder):
    root, _ = folder
    entry = register_format_dataset("shapes", "image_folder", str(root), mode="L",
                                    key="studies.s.data")
    assert isinstance(entry, FileDataset) and DATASETS.get("shapes") is entry
    assert register_format_dataset("shapes", "image_folder", str(root), mode="L") is entry
    with pytest.raises(ConfigError, match="dataset 'shapes' \\(key data.name\\) is already"):
        register_format_dataset("shapes", "image_folder", str(root), mode="RGB")
    with pytest.raises(ConfigError, match="'digits' .* already registered"):
        register_format_dataset("digits", "numpy", str(root))
    with pytest.raises(ConfigError, match="unknown data format 'csv' \\(key studies.s.data"
                                          ".format\\); allowed: image_folder, numpy"):
        format_dataset("x", "csv", "p", key="studies.s.data")
    with pytest.raises(ConfigError, match="studies.s.data: .*'colour'.*takes mode, size, mean, "
                                          "std, augment"):
        format_dataset("x", "image_folder", "p", key="studies.s.data", colour="red")
    with pytest.raises(ConfigError, match="studies.s.data: dataset 'x': num_classes"):
        format_dataset("x", "numpy", "p", key="studies.s.data", num_classes=0)
    with pytest.raises(ConfigError, match="studies.s.data.path must name"):
        format_dataset("x", "numpy", "", key="studies.s.data")


def test_an_unwritable_location_only_costs_a_recomputation(folder, monkeypatch):
    root, _ = folder

    def refuse(path, obj):
        raise PermissionError(13, "read-only", str(path))

    monkeypatch.setattr(generic, "atomic_write_json", refuse)
    with pytest.warns(UserWarning, match="could not cache dataset statistics"):
        data = image_folder("shapes", root).load(val_size=0)
    assert data.train_x.shape[0] == 10
    assert os.path.exists(root)


# ---------------------------------------------------------------- streaming


def _same_splits(streamed, loaded):
    for split in ("train", "val", "test"):
        x, y = streamed.split(split)
        mem_x, mem_y = loaded.split(split)
        assert isinstance(x, SampleSet) and x.shape == tuple(mem_x.shape)
        assert torch.equal(x[torch.arange(len(x))], mem_x) and torch.equal(y, mem_y)


def test_a_streamed_image_folder_reads_the_in_memory_numbers(folder, monkeypatch):
    root, _ = folder
    loaded = image_folder("m", root).load(val_size=3)
    streamed = image_folder("s", root, stream=True).load(val_size=3)
    _same_splits(streamed, loaded)
    assert torch.equal(streamed.train_x[2], loaded.train_x[2])
    assert torch.equal(streamed.train_x[1:4], loaded.train_x[1:4])
    assert torch.equal(streamed.test_x[-2:], loaded.test_x[-2:])
    assert torch.equal(streamed.train_x.subset(slice(2, 5))[torch.tensor([2, 0])],
                       loaded.train_x[[4, 2]])
    monkeypatch.setattr(ImageFolder, "read", lambda self: pytest.fail("decoded every image"))
    image_folder("s", root, stream=True).load(val_size=3)  # statistics cached, nothing read


def test_streamed_numpy_rows_are_memory_mapped_and_the_same(tmp_path):
    arrays = make_arrays(sample=(2, 6))
    path = save_arrays(tmp_path / "seq", arrays, "npy")
    streamed = numpy_arrays("s", path, stream=True).load(val_size=5)
    _same_splits(streamed, numpy_arrays("m", path).load(val_size=5))
    assert isinstance(streamed.train_x.rows.array, np.memmap)
    with pytest.raises(ConfigError, match="stream needs a folder of .npy files"):
        numpy_arrays("z", tmp_path / "a.npz", stream=True)
    np.savez(tmp_path / "b", **arrays)
    with pytest.raises(ConfigError, match="b.npz: streaming reads .npy files memory-mapped"):
        FileDataset("b", numpy_arrays("b", tmp_path / "b.npz").source, stream=True).load()


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_batches_equal_the_in_memory_batches(folder, workers):
    root, _ = folder
    loaded = image_folder("m", root, augment="crop_flip").load(val_size=0)
    streamed = image_folder("s", root, augment="crop_flip", stream=True).load(val_size=0)
    for epoch in (0, 3):  # each epoch's order and augmentation come from (seed, epoch) alone
        def gen():
            return epoch_generator(7, epoch)

        memory = list(iterate_batches(loaded.train_x, loaded.train_y, 4, shuffle=True,
                                      generator=gen(), augment="crop_flip"))
        lazy = list(iterate_batches(streamed.train_x, streamed.train_y, 4, shuffle=True,
                                    generator=gen(), augment="crop_flip"))
        workers_ = list(stream_batches(streamed.train_x, streamed.train_y, 4, shuffle=True,
                                       generator=gen(), augment="crop_flip",
                                       num_workers=workers))
        assert len(memory) == len(lazy) == len(workers_) == 3
        for (mx, my), (lx, ly), (wx, wy) in zip(memory, lazy, workers_):
            assert torch.equal(mx, lx) and torch.equal(mx, wx)
            assert torch.equal(my, ly) and torch.equal(my, wy)
    plain = list(stream_batches(streamed.test_x, streamed.test_y, 2, num_workers=workers,
                                drop_last=True))
    assert [len(y) for _, y in plain] == [2, 2]
    assert torch.equal(torch.cat([x for x, _ in plain]), loaded.test_x[:4])


def test_a_streamed_dataset_trains_like_the_in_memory_one(folder):
    root, _ = folder
    results = []
    for stream in (False, True):
        data = image_folder("d", root, augment="crop_flip", stream=stream).load(val_size=2)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * HEIGHT * WIDTH, 16), nn.ReLU(),
                              nn.Linear(16, 3))
        state = train(model, data, TrainConfig(epochs=2, batch_size=4, lr=0.05), seed=1,
                      progress=False)
        results.append((model.state_dict(), state.history, evaluate_splits(model, data)))
    (dense, history, metrics), (streamed, streamed_history, streamed_metrics) = results
    assert all(torch.equal(dense[k], streamed[k]) for k in dense)
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in streamed_history]
    assert metrics == streamed_metrics


def test_a_streamed_run_read_by_workers_resumes_where_it_stopped(folder, tmp_path,
                                                                 monkeypatch):
    """Training reads a streamed dataset through DataLoader workers; a run stopped after
    its first epoch and resumed from its checkpoint ends with the weights of a run that
    was never stopped."""
    import prunebench.data.streaming as streaming

    root, _ = folder
    used = []
    real = streaming.stream_batches
    monkeypatch.setattr(streaming, "stream_batches",
                        lambda *a, **k: used.append(k.get("num_workers", 2)) or real(*a, **k))
    data = image_folder("d", root, augment="crop_flip", stream=True).load(val_size=2)
    recipe = TrainConfig(epochs=3, batch_size=4, lr=0.05)

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * HEIGHT * WIDTH, 16), nn.ReLU(),
                             nn.Linear(16, 3))

    whole = model()
    train(whole, data, recipe, seed=1, run_dir=tmp_path / "whole", progress=False)
    assert used and all(workers == streaming.DEFAULT_WORKERS > 0 for workers in used)

    stopped = model()

    def stop_after_first_epoch(state):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(stopped, data, recipe, seed=1, run_dir=tmp_path / "resumed", progress=False,
              on_epoch_end=stop_after_first_epoch)
    resumed = model()
    state = train(resumed, data, recipe, seed=1, run_dir=tmp_path / "resumed", progress=False)
    assert state.epoch == 3
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in whole.state_dict().items())


def test_the_streamed_statistics_pass_checks_every_training_image(folder):
    root, _ = folder
    bad = _corrupt(root)
    with pytest.raises(DataError) as info:
        image_folder("s", root, stream=True).load()
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="stream must be true or false"):
        image_folder("s", root, stream="yes")
