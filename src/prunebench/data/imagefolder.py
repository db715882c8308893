"""An image folder: train/<class>/*.png|jpg|jpeg and test/<class>/*, read with Pillow.

Class names are the train/ subfolders, sorted (by code point), and their positions are the
labels; test/ may hold the same classes or fewer, never others. Files are read in sorted
order, class by class. Hidden entries (a leading ".") and files of other types are skipped;
subfolders of a class folder are not searched.

Every image is converted to one mode, "L" (1 channel) or "RGB" (3), and has one size: both
come from the first training image (first class, first file) unless given, and without them
an image of another mode or size is refused rather than silently converted. With `size`
(height, width) every image is resized (bilinear). Pixels stay uint8 until normalisation.

Decoding thousands of files takes a while, so the decoded uint8 tensors are cached next to the
folder (`<folder>.prunebench-<mode>-<size>.pt`), keyed by the path, size, mtime, ctime and
inode of every image; any change to the images rebuilds it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from prunebench.data.cache import load_cache, save_cache
from prunebench.data.formats import RawSplits
from prunebench.data.source import Arrays, one_line, sidecar_path, stat_digest
from prunebench.errors import ConfigError, DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
MODES = {"L": 1, "RGB": 3}
# Pillow modes whose natural target is one channel; every other mode becomes RGB.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
LAYOUT = "an image folder holds train/<class>/*.png and test/<class>/*.png (or .jpg, .jpeg)"

Labelled = list[tuple[Path, int]]


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        raise ConfigError("image-folder datasets need Pillow: pip install pillow") from None
    return Image


@dataclass(frozen=True)
class ImageFolder:
    """The image folder at `path`; `mode` ("L"/"RGB") and `size` ((height, width)) fix what
    every image is converted to, None takes them from the first training image."""

    path: Path
    mode: str | None = None
    size: tuple[int, int] | None = None

    format: ClassVar[str] = "image_folder"
    scale: ClassVar[float] = 255.0

    def options(self) -> dict[str, Any]:
        return {"mode": self.mode, "size": None if self.size is None else list(self.size)}

    def stats_key(self) -> str:
        size = "auto" if self.size is None else f"{self.size[0]}x{self.size[1]}"
        return f"{self.mode or 'auto'}-{size}"

    def where(self, part: str) -> str:
        return str(self.path / ("train" if part.endswith("train") else "test"))

    # ---------------------------------------------------------------- the listing

    def classes(self) -> tuple[list[str], list[str]]:
        """The train and test class names, sorted; test's must all be train's."""
        if not self.path.is_dir():
            raise DataError(f"{self.path}: no such folder; {LAYOUT}")
        train, test = self._class_names("train"), self._class_names("test")
        if not train:
            raise DataError(f"{self.path / 'train'}: no class folders; {LAYOUT}")
        known = set(train)
        for name in test:
            if name not in known:
                raise DataError(f"{self.path / 'test' / name}: class {name!r} is not in "
                                f"{self.path / 'train'}")
        if not test:
            raise DataError(f"{self.path / 'test'}: no class folders; {LAYOUT}")
        return train, test

    def _class_names(self, split: str) -> list[str]:
        folder = self.path / split
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder; {LAYOUT}")
        return sorted(e.name for e in os.scandir(folder)
                      if e.is_dir() and not e.name.startswith("."))

    def listing(self) -> tuple[list[str], Labelled, Labelled]:
        """Class names and every (image file, label) of train and test, in reading order."""
        train_classes, test_classes = self.classes()
        index = {name: i for i, name in enumerate(train_classes)}
        splits = []
        for split, names in (("train", train_classes), ("test", test_classes)):
            labelled: Labelled = []
            for name in names:
                folder = self.path / split / name
                images = sorted(_images(folder))
                if not images:
                    raise _empty(folder)
                labelled += [(folder / image, index[name]) for image in images]
            splits.append(labelled)
        return train_classes, splits[0], splits[1]

    def files(self) -> dict[str, Path]:
        _, train, test = self.listing()
        return {path.relative_to(self.path).as_posix(): path for path, _ in train + test}

    # ---------------------------------------------------------------- shape and reading

    def shape(self) -> tuple[int, tuple[int, ...]]:
        """Class count and (C, H, W) from the class folders and one image's header; every
        class folder is checked to hold an image (the first one found), none is decoded."""
        train, test = self.classes()
        first = min(_images(self.path / "train" / train[0]), default=None)
        if first is None:
            raise _empty(self.path / "train" / train[0])
        for split, names in (("train", train[1:]), ("test", test)):
            for name in names:
                folder = self.path / split / name
                if next(_images(folder), None) is None:
                    raise _empty(folder)
        mode, size = self._target(self.path / "train" / train[0] / first)
        return len(train), (MODES[mode], *size)

    def _target(self, first: Path) -> tuple[str, tuple[int, int]]:
        """The mode and (height, width) every image becomes, from the options or `first`."""
        raw_mode, (width, height) = _header(first)
        mode = self.mode or ("L" if raw_mode in _GREY_MODES else "RGB")
        return mode, self.size or (height, width)

    def read(self) -> Arrays:
        """Decode every image (or read the decoded cache when no image changed)."""
        classes, train, test = self.listing()
        files = {path.relative_to(self.path).as_posix(): path for path, _ in train + test}
        key = {"files": [stat_digest(files)], "options": [self.stats_key()]}
        cache = sidecar_path(self.path, f".prunebench-{self.stats_key()}.pt")
        cached = load_cache(cache, key)  # type: ignore[arg-type]
        if cached is not None:
            return Arrays(*(t.numpy() for t in cached))
        first = train[0][0]
        reference = _header(first)
        mode, size = self._target(first)
        arrays = []
        for labelled in (train, test):
            images = np.empty((len(labelled), MODES[mode], *size), dtype=np.uint8)
            for i, (path, _) in enumerate(labelled):
                images[i] = self._decode(path, mode, size, first, reference)
            arrays += [images, np.array([label for _, label in labelled], dtype=np.int64)]
        result = Arrays(*arrays)
        tensors = RawSplits(*(torch.from_numpy(a) for a in result))
        save_cache(cache, tensors, key)  # type: ignore[arg-type]
        return result

    def rows(self) -> Arrays:
        """Train and test images as `ImageRows`, decoded only when indexed, and labels."""
        _, train, test = self.listing()
        first = train[0][0]
        reference = _header(first)
        mode, size = self._target(first)
        arrays = []
        for labelled in (train, test):
            paths = tuple(path for path, _ in labelled)
            arrays += [ImageRows(self, paths, mode, size, first, reference),
                       np.array([label for _, label in labelled], dtype=np.int64)]
        return Arrays(*arrays)

    def _decode(self, path: Path, mode: str, size: tuple[int, int], first: Path,
                reference: tuple[str, tuple[int, int]]) -> np.ndarray:
        """One image as uint8 (C, H, W); a mode or size other than the first image's is
        refused unless `mode`/`size` were given."""
        image_module = _pil()
        try:
            with image_module.open(path) as image:
                if self.mode is None and image.mode != reference[0]:
                    raise DataError(f"{path}: mode {image.mode!r}, but the first image {first} "
                                    f"is {reference[0]!r}; give mode ('L' or 'RGB') to convert "
                                    "every image")
                if self.size is None and image.size != reference[1]:
                    raise DataError(f"{path}: {_wxh(image.size)} pixels, but the first image "
                                    f"{first} is {_wxh(reference[1])}; give size ([height, "
                                    "width]) to resize every image")
                converted = image.convert(mode) if image.mode != mode else image
                if converted.size != (size[1], size[0]):
                    converted = converted.resize((size[1], size[0]),
                                                 image_module.Resampling.BILINEAR)
                pixels = np.asarray(converted)
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 (Pillow raises OSError, SyntaxError, ValueError...)
            raise DataError(f"{path}: not a readable image ({one_line(err)})") from None
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


@dataclass(frozen=True)
class ImageRows:
    """The images of one split, decoded when indexed: `rows[i]` is one uint8 (C, H, W)
    image, `rows[slice]` and `rows[index_array]` a uint8 (B, C, H, W) batch. It holds
    paths only, so it pickles small (for DataLoader workers)."""

    folder: ImageFolder
    paths: tuple[Path, ...]
    mode: str
    size: tuple[int, int]
    first: Path
    reference: tuple[str, tuple[int, int]]

    dtype: ClassVar[np.dtype] = np.dtype(np.uint8)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.paths), MODES[self.mode], *self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._one(self.paths[key])
        index = np.arange(len(self.paths))[key]
        batch = np.empty((len(index), *self.shape[1:]), dtype=np.uint8)
        for i, row in enumerate(index.tolist()):
            batch[i] = self._one(self.paths[row])
        return batch

    def _one(self, path: Path) -> np.ndarray:
        return self.folder._decode(path, self.mode, self.size, self.first, self.reference)


def _images(folder: Path) -> Iterator[str]:
    """Names of the image files in `folder`, in directory order."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if (not entry.name.startswith(".") and os.path.splitext(entry.name)[1].lower()
                    in IMAGE_SUFFIXES and entry.is_file()):
                yield entry.name


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    """Mode and (width, height) from an image's header, without decoding its pixels."""
    image_module = _pil()
    try:
        with image_module.open(path) as image:
            return image.mode, image.size
    except Exception as err:  # noqa: BLE001
        raise DataError(f"{path}: not a readable image ({one_line(err)})") from None


def _empty(folder: Path) -> DataError:
    return DataError(f"{folder}: empty class folder (no .png, .jpg or .jpeg file)")


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
