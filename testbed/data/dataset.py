"""The `Dataset` container and the small helpers shared by every loader."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

TASKS = ("classification", "regression", "binary")
LOSSES = {"classification": "cross_entropy", "regression": "mse", "binary": "bce_with_logits"}


class DataError(ValueError):
    """A data file or data set that cannot be used; the message is one line naming the file and problem."""


@dataclass
class Dataset:
    """A train/test pair of arrays and the task they pose.

    `x_*` are float64 (N, D). Targets: classification int64 (N,) labels in 0..C-1; regression float64
    (N, out); binary float64 (N, out) with values in {0, 1}.
    """

    name: str
    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; allowed: {', '.join(TASKS)}")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.float64 or x.ndim != 2:
                raise ValueError(f"{self.name}: x_{split} must be float64 (N, D), got {x.dtype} {x.shape}")
            if len(y) != len(x):
                raise ValueError(f"{self.name}: {len(x)} x_{split} rows but {len(y)} y_{split} rows")
            if self.task == "classification":
                if y.dtype != np.int64 or y.ndim != 1:
                    raise ValueError(f"{self.name}: y_{split} must be int64 (N,), got {y.dtype} {y.shape}")
                if self.num_classes is None or (y.size and not 0 <= y.min() <= y.max() < self.num_classes):
                    raise ValueError(f"{self.name}: y_{split} labels must lie in 0..num_classes-1")
            elif y.dtype != np.float64 or y.ndim != 2:
                raise ValueError(f"{self.name}: y_{split} must be float64 (N, out), got {y.dtype} {y.shape}")
        if self.x_train.shape[1] != self.x_test.shape[1] or self.y_train.shape[1:] != self.y_test.shape[1:]:
            raise ValueError(f"{self.name}: train and test arrays disagree in width")

    @property
    def in_features(self) -> int:
        """Input width D."""
        return self.x_train.shape[1]

    @property
    def out_features(self) -> int:
        """Output width: the number of classes for classification, else the target width."""
        return int(self.num_classes) if self.task == "classification" else self.y_train.shape[1]

    @property
    def loss(self) -> str:
        """The loss that matches the task: "cross_entropy", "mse" or "bce_with_logits"."""
        return LOSSES[self.task]


def rngs(seed: int, count: int) -> list[np.random.Generator]:
    """`count` independent generators spawned from `seed`, one per purpose (so that, e.g., the test set
    does not change when `n_train` does)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]


def check_int(option: str, value: object, minimum: int = 1) -> int:
    """`value` as an int, or a ValueError if it is not an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"option {option!r} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(option: str, value: object, minimum: float = 0.0, maximum: float = np.inf) -> float:
    """`value` as a float, or a ValueError if it is not a real number in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not minimum <= value <= maximum:
        raise ValueError(f"option {option!r} must be a number in [{minimum}, {maximum}], got {value!r}")
    return float(value)


def standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both splits shifted and scaled per feature by the TRAIN mean and std (a zero std divides by 1)."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return (x_train - mean) / std, (x_test - mean) / std
