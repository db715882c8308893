"""NumPy arrays: x_train, y_train, x_test, y_test in one .npz, or as four .npy files in a folder.

Inputs are (N, *input_shape) of any rank and any real dtype (bool, integers, floats): (N, T)
sequences, (N, C, T), (N, C, H, W) images. Labels are 1-D integer arrays, one per input, in
0..num_classes-1 (num_classes is given, or the largest label + 1).

.npy files are memory-mapped (`mmap_mode="r"`): the shape comes from their headers and only
the labels are read to plan; loading reads each split once into memory. Members of an .npz
cannot be memory-mapped by NumPy: planning reads their headers from the zip (and the labels),
loading decompresses the inputs whole. Arrays are loaded with `allow_pickle=False`.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from prunebench.data.source import Arrays, one_line
from prunebench.errors import ConfigError, DataError

PARTS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class NumpyArrays:
    """The arrays at `path`: an .npz file, or a folder of x_train.npy, y_train.npy, x_test.npy
    and y_test.npy."""

    path: Path
    num_classes: int | None = None

    format: ClassVar[str] = "numpy"
    scale: ClassVar[float] = 1.0

    def options(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}

    def stats_key(self) -> str:
        return "raw"

    @property
    def npz(self) -> bool:
        return not self.path.is_dir()

    def where(self, part: str) -> str:
        return f"{self.path} (array {part})" if self.npz else str(self.path / f"{part}.npy")

    def files(self) -> dict[str, Path]:
        if self.npz:
            self._check_exists(self.path)
            return {self.path.name: self.path}
        paths = {f"{part}.npy": self.path / f"{part}.npy" for part in PARTS}
        for path in paths.values():
            self._check_exists(path)
        return paths

    def _check_exists(self, path: Path) -> None:
        if not path.is_file():
            raise DataError(f"{path}: no such file; NumPy data is an .npz with arrays "
                            f"{', '.join(PARTS)}, or a folder of {', '.join(PARTS)} as .npy")

    # ---------------------------------------------------------------- shape and reading

    def shape(self) -> tuple[int, tuple[int, ...]]:
        """Class count and input shape from the headers of x and the labels (read whole,
        being small), with every check but the inputs' values."""
        return self._check({part: self._header(part) if part.startswith("x") else
                            self._array(part) for part in PARTS})

    def read(self) -> Arrays:
        arrays = {part: self._array(part) for part in PARTS}
        self._check(arrays)
        return Arrays(arrays["x_train"], np.array(arrays["y_train"], dtype=np.int64),
                      arrays["x_test"], np.array(arrays["y_test"], dtype=np.int64))

    def rows(self) -> Arrays:
        """The inputs as `ArrayRows` over the memory-mapped .npy files (an .npz cannot be
        memory-mapped: a ConfigError), the labels in memory, every check but the inputs'
        values done."""
        if self.npz:
            raise ConfigError(f"{self.path}: streaming reads .npy files memory-mapped, and the "
                              "arrays of an .npz cannot be; save them as x_train.npy, "
                              "y_train.npy, x_test.npy and y_test.npy in a folder")
        arrays = {part: self._array(part) for part in PARTS}
        self._check(arrays)
        return Arrays(ArrayRows(self.path / "x_train.npy"),
                      np.array(arrays["y_train"], dtype=np.int64),
                      ArrayRows(self.path / "x_test.npy"),
                      np.array(arrays["y_test"], dtype=np.int64))

    def _check(self, arrays: dict[str, Any]) -> tuple[int, tuple[int, ...]]:
        """Raise a DataError naming the file unless the four arrays form a dataset; return
        (number of classes, input shape). x may be a header (shape, dtype)."""
        shapes = {part: _shape_dtype(a) for part, a in arrays.items()}
        for split in ("train", "test"):
            (x_shape, x_dtype), (y_shape, y_dtype) = shapes[f"x_{split}"], shapes[f"y_{split}"]
            if len(x_shape) < 2 or x_shape[0] == 0 or 0 in x_shape[1:]:
                raise DataError(f"{self.where(f'x_{split}')}: shape {x_shape}; inputs must be "
                                "(N, *input_shape) with N >= 1 samples and no empty axis")
            if not (x_dtype == np.bool_ or (np.issubdtype(x_dtype, np.number)
                                            and not np.issubdtype(x_dtype, np.complexfloating))):
                raise DataError(f"{self.where(f'x_{split}')}: dtype {x_dtype}; inputs must be "
                                "bool, integers or floats")
            if not np.issubdtype(y_dtype, np.integer):
                raise DataError(f"{self.where(f'y_{split}')}: dtype {y_dtype}; labels must be "
                                "integers (e.g. y.astype(np.int64))")
            if len(y_shape) != 1 or y_shape[0] != x_shape[0]:
                raise DataError(f"{self.where(f'y_{split}')}: shape {y_shape}, expected one "
                                f"label per input: ({x_shape[0]},) for x_{split} {x_shape}")
        input_shape = tuple(shapes["x_train"][0][1:])
        if tuple(shapes["x_test"][0][1:]) != input_shape:
            raise DataError(f"{self.where('x_test')}: inputs of shape "
                            f"{tuple(shapes['x_test'][0][1:])}, but x_train's are {input_shape}")
        top = max(int(arrays["y_train"].max()), int(arrays["y_test"].max()))
        num_classes = top + 1 if self.num_classes is None else self.num_classes
        for part in ("y_train", "y_test"):
            labels = arrays[part]
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= num_classes:
                raise DataError(f"{self.where(part)}: labels {low}..{high} outside "
                                f"0..{num_classes - 1}" + ("" if self.num_classes is None
                                                           else " (num_classes)"))
        return num_classes, input_shape

    def _array(self, part: str) -> np.ndarray:
        """The array named `part`: memory-mapped from its .npy, or decompressed from the npz."""
        try:
            if not self.npz:
                path = self.path / f"{part}.npy"
                self._check_exists(path)
                return np.load(path, mmap_mode="r", allow_pickle=False)
            self._check_exists(self.path)
            with np.load(self.path, allow_pickle=False) as members:
                if part not in members.files:
                    raise self._missing(part, members.files)
                return members[part]
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 (OSError, ValueError, zipfile.BadZipFile, ...)
            raise DataError(f"{self.where(part)}: not a readable NumPy array "
                            f"({one_line(err)})") from None

    def _header(self, part: str) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) of an array without reading its data."""
        if not self.npz:
            array = self._array(part)  # memory-mapped: only the header is read
            return array.shape, array.dtype
        self._check_exists(self.path)
        try:
            with zipfile.ZipFile(self.path) as archive:
                names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
                if part not in names:
                    raise self._missing(part, names)
                with archive.open(f"{part}.npy") as member:
                    version = np.lib.format.read_magic(member)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(member)
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001
            raise DataError(f"{self.where(part)}: not a readable NumPy array "
                            f"({one_line(err)})") from None
        if dtype.hasobject:
            raise DataError(f"{self.where(part)}: dtype {dtype}; object arrays are not loaded")
        return tuple(shape), dtype

    def _missing(self, part: str, present: list[str]) -> DataError:
        return DataError(f"{self.path}: no array {part!r} (it has: "
                         f"{', '.join(sorted(present)) or 'none'}); expected {', '.join(PARTS)}")


class ArrayRows:
    """Rows of a memory-mapped .npy, read when indexed (`rows[slice]`, `rows[index_array]`
    give an in-memory array). The map is opened lazily in each process, and pickling drops
    it, so DataLoader workers receive the path, never the data."""

    def __init__(self, path: Path):
        self.path = path
        self._map: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._map is None:
            self._map = np.load(self.path, mmap_mode="r", allow_pickle=False)
        return self._map

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.array[key])

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_map": None}


def _shape_dtype(array: Any) -> tuple[tuple[int, ...], np.dtype]:
    if isinstance(array, tuple):
        return array
    return tuple(array.shape), array.dtype
