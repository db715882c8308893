"""Datasets as device-resident tensors with fixed splits, and index-slice batching.

`DATASETS` is the `Registry` of `Dataset` entries (key data.name); `register_dataset` adds one.
"""

from prunebench.data.batching import iterate_batches, num_batches, random_crop_flip
from prunebench.data.datasets import (
    DATASETS,
    Dataset,
    DataSplits,
    cached_loader,
    dataset_shape,
    load_dataset,
    register_dataset,
)
from prunebench.data.formats import RawSplits

__all__ = [
    "DATASETS",
    "Dataset",
    "DataSplits",
    "RawSplits",
    "cached_loader",
    "dataset_shape",
    "iterate_batches",
    "load_dataset",
    "num_batches",
    "random_crop_flip",
    "register_dataset",
]
