"""Datasets as device-resident tensors with fixed splits, and index-slice batching."""

from prunebench.data.batching import iterate_batches, num_batches, random_crop_flip
from prunebench.data.datasets import DATASETS, DataSplits, dataset_shape, load_dataset

__all__ = [
    "DATASETS",
    "DataSplits",
    "dataset_shape",
    "iterate_batches",
    "load_dataset",
    "num_batches",
    "random_crop_flip",
]
