"""Datasets as in-memory tensors with fixed splits, and index-slice batching.

`DATASETS` is the `Registry` of dataset entries (key data.name); `register_dataset` adds one.
Besides the built-in `Dataset`s, `image_folder(...)` and `numpy_arrays(...)` make entries for
one's own data (see `prunebench.data.generic`).
"""

from prunebench.data.batching import iterate_batches, num_batches, random_crop_flip
from prunebench.data.datasets import (
    DATASETS,
    Dataset,
    DatasetEntry,
    DataSplits,
    cached_loader,
    dataset_fingerprint,
    dataset_shape,
    load_dataset,
    register_dataset,
)
from prunebench.data.formats import RawSplits
from prunebench.data.streaming import SampleSet, stream_batches
from prunebench.data.generic import (
    FORMATS,
    FileDataset,
    channel_stats,
    format_dataset,
    image_folder,
    numpy_arrays,
    register_format_dataset,
)

__all__ = [
    "DATASETS",
    "FORMATS",
    "Dataset",
    "DatasetEntry",
    "DataSplits",
    "FileDataset",
    "RawSplits",
    "SampleSet",
    "cached_loader",
    "channel_stats",
    "dataset_fingerprint",
    "dataset_shape",
    "format_dataset",
    "image_folder",
    "iterate_batches",
    "load_dataset",
    "num_batches",
    "numpy_arrays",
    "random_crop_flip",
    "register_dataset",
    "register_format_dataset",
    "stream_batches",
]
