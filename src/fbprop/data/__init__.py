"""Data: the IDX file format and the image classification data sets built on it."""

from .augment import AUGMENTATIONS, Affine, Elastic, make_transform
from .datasets import DATASETS, Dataset, Split, batches, load_dataset
from .idx import IdxError, read_idx, write_idx

__all__ = [
    "AUGMENTATIONS",
    "Affine",
    "Elastic",
    "make_transform",
    "DATASETS",
    "Dataset",
    "IdxError",
    "Split",
    "batches",
    "load_dataset",
    "read_idx",
    "write_idx",
]
