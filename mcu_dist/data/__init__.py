"""Datasets, forget/retain/test splits and mini-batches."""

from mcu_dist.data.forget import Splits, make_splits, write_manifest
from mcu_dist.data.loader import Batch, Normalizer, iterate
from mcu_dist.data.registry import DATASETS, DatasetBundle, ImageData, check_data
from mcu_dist.data.sources import load_dataset

__all__ = [
    "DATASETS",
    "Batch",
    "DatasetBundle",
    "ImageData",
    "Normalizer",
    "Splits",
    "check_data",
    "iterate",
    "load_dataset",
    "make_splits",
    "write_manifest",
]
