"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; no download)."""

from __future__ import annotations

import numpy as np

from .dataset import Dataset, check_float, standardize


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded stratified split of `range(len(labels))` into sorted (train, test) index arrays."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    return np.sort(train), np.sort(test)


def digits(seed: int, *, test_fraction: float = 0.25) -> Dataset:
    """The digits, split stratified by `seed`, each pixel standardised with the training statistics."""
    from sklearn.datasets import load_digits

    test_fraction = check_float("test_fraction", test_fraction, 0.0, 1.0)
    if test_fraction in (0.0, 1.0):
        raise ValueError(f"option 'test_fraction' must lie strictly between 0 and 1, got {test_fraction}")
    x, y = load_digits(return_X_y=True)
    x, y = x.astype(np.float64), y.astype(np.int64)
    train, test = split_indices(y, test_fraction, seed)
    x_train, x_test = standardize(x[train], x[test])
    return Dataset("digits", "classification", x_train, y[train], x_test, y[test], 10)
