"""Data sets for the testbed, generated or read offline, and a resumable minibatch sampler."""

from .dataset import DataError, Dataset
from .idx import read_idx, write_idx
from .registry import DATASETS, load_dataset
from .sampler import BatchSampler

__all__ = ["DATASETS", "BatchSampler", "DataError", "Dataset", "load_dataset", "read_idx", "write_idx"]
