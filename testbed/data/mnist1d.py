"""MNIST-1D (Greydanus 2020, "Scaling down deep learning"): 40-sample 1-D signals of 10 digit templates.

Built offline with the `mnist1d` package's own generator and default arguments (4000 train / 1000 test,
fixed by the generator's seed, so the `seed` argument does not change the data), then cached as .npz.
"""

from __future__ import annotations

import importlib.metadata
import os
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .dataset import DataError, Dataset
from .dataset import standardize as standardize_features

SHAPES = {"x_train": (4000, 40), "y_train": (4000,), "x_test": (1000, 40), "y_test": (1000,)}
NUM_CLASSES = 10


def default_cache_dir() -> Path:
    """`$TESTBED_CACHE` if set, else `~/.cache/testbed`."""
    return Path(os.environ.get("TESTBED_CACHE") or Path.home() / ".cache" / "testbed")


def build() -> dict[str, np.ndarray]:
    """Generate the arrays with `make_dataset(get_dataset_args())`, never the download path. The generator
    reseeds the global `random` and `np.random` states; they are restored afterwards."""
    from mnist1d.data import get_dataset_args, make_dataset

    saved = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    return {
        "x_train": np.asarray(data["x"], np.float64),
        "y_train": np.asarray(data["y"], np.int64),
        "x_test": np.asarray(data["x_test"], np.float64),
        "y_test": np.asarray(data["y_test"], np.int64),
    }


def check(arrays: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """`arrays` if they have the documented shapes and labels 0..9, else a DataError naming `source`."""
    for key, shape in SHAPES.items():
        if key not in arrays or arrays[key].shape != shape:
            found = arrays[key].shape if key in arrays else "nothing"
            raise DataError(f"{source}: expected {key} of shape {shape}, found {found}")
    labels = np.concatenate([arrays["y_train"], arrays["y_test"]])
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(f"{source}: labels outside 0..{NUM_CLASSES - 1}")
    return arrays


def save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to `path` as .npz through a temporary file in the same directory and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_arrays(cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The MNIST-1D arrays from the cache, building and caching them if the cache is missing or unreadable."""
    version = importlib.metadata.version("mnist1d")
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"mnist1d-{version}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                return check({key: f[key] for key in f.files}, str(path))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # unreadable or wrong cache: rebuild it below
    arrays = check(build(), "mnist1d.make_dataset(get_dataset_args())")
    save_atomic(path, arrays)
    return arrays


def mnist1d(seed: int, *, cache_dir: str | os.PathLike | None = None, standardize: bool = False) -> Dataset:
    """MNIST-1D; `standardize` rescales each feature with the training statistics."""
    a = load_arrays(cache_dir)
    x_train, x_test = a["x_train"], a["x_test"]
    if standardize:
        x_train, x_test = standardize_features(x_train, x_test)
    return Dataset("mnist1d", "classification", x_train, a["y_train"], x_test, a["y_test"], NUM_CLASSES)

