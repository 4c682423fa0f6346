"""MNIST-style IDX files (LeCun et al.'s format): read, write, and load a train/test pair as a Dataset.

Layout: two zero bytes, a dtype code, the number of dimensions; then each dimension as a big-endian
uint32; then the data, big-endian, row-major. Files may be gzip-compressed (detected by the 1f 8b magic).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .dataset import DataError, Dataset, check_int
from .dataset import standardize as standardize_features

CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
DTYPE_CODES = {dtype[1:]: code for code, dtype in CODES.items()}  # "u1" -> 0x08, ...
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

PathLike = str | os.PathLike


def read_idx(path: PathLike) -> np.ndarray:
    """The array stored in the IDX file `path` (gzipped or not), in native byte order.

    Raises DataError, one line naming the file, if it is missing, not IDX, or shorter or longer than
    its header says.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: does not exist" if not path.exists() else f"{path}: is not a file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: truncated: header cut short ({len(raw)} bytes, need at least 4)")
    if raw[:2] != b"\x00\x00" or raw[2] not in CODES:
        raise DataError(f"{path}: bad magic number {raw[:4].hex()}; not an IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated: header cut short ({len(raw)} bytes, header needs {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(CODES[raw[2]])
    need, have = int(np.prod(shape)) * dtype.itemsize, len(raw) - header
    if have < need:
        raise DataError(f"{path}: truncated: shape {shape} needs {need} data bytes, found {have}")
    if have > need:
        raise DataError(f"{path}: {have - need} unexpected bytes after the data of shape {shape}")
    array = np.frombuffer(raw, dtype, int(np.prod(shape)), header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Write `array` (uint8, int8, int16, int32, float32 or float64) as IDX; gzipped if `path` ends in .gz."""
    array = np.asarray(array)
    code = DTYPE_CODES.get(array.dtype.str[1:])
    if code is None:
        allowed = ", ".join(np.dtype(d).name for d in CODES.values())
        raise DataError(f"{path}: cannot write dtype {array.dtype} as IDX; allowed: {allowed}")
    if not 1 <= array.ndim <= 255:
        raise DataError(f"{path}: IDX needs 1 to 255 dimensions, got {array.ndim}")
    data = (
        bytes([0, 0, code, array.ndim])
        + np.asarray(array.shape, ">u4").tobytes()
        + array.astype(CODES[code]).tobytes()
    )
    Path(path).write_bytes(gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data)


def _resolve(key: str, explicit: PathLike | None, directory: PathLike | None) -> Path:
    """The file for `key`: the explicit path, else the standard name (or name.gz) in `directory`."""
    if explicit is not None:
        return Path(explicit)
    if directory is None:
        raise DataError(f"idx: no file for {key!r}; give option 'path' (a directory) or {key!r}")
    plain = Path(directory) / FILES[key]
    gz = plain.with_name(plain.name + ".gz")
    if plain.exists() or not gz.exists():
        return plain  # a missing plain file is reported by read_idx
    return gz


def _pair(images_path: Path, labels_path: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Images flattened to (N, rows*cols) float64 (uint8 scaled to [0, 1]) and int64 labels."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim < 2:
        raise DataError(f"{images_path}: images need at least 2 dimensions, got shape {images.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{labels_path}: labels must be 1-D integers, got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels but {images_path} holds {len(images)} images")
    if labels.size and labels.min() < 0:
        raise DataError(f"{labels_path}: label {labels.min()} out of range (labels must be >= 0)")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = images.reshape(len(images), -1).astype(np.float64)
    return (x / 255.0 if images.dtype == np.uint8 else x), labels.astype(np.int64)


def idx(
    seed: int,
    *,
    path: PathLike | None = None,
    train_images: PathLike | None = None,
    train_labels: PathLike | None = None,
    test_images: PathLike | None = None,
    test_labels: PathLike | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    standardize: bool = False,
) -> Dataset:
    """A classification Dataset from the four standard IDX files in directory `path` (each may be .gz),
    or from explicit file paths that override them. `limit_*` keep the first examples of a split.
    Classes are 0..max label; `seed` is unused."""
    limit_train = None if limit_train is None else check_int("limit_train", limit_train)
    limit_test = None if limit_test is None else check_int("limit_test", limit_test)
    explicit = {"train_images": train_images, "train_labels": train_labels,
                "test_images": test_images, "test_labels": test_labels}  # fmt: skip
    files = {key: _resolve(key, value, path) for key, value in explicit.items()}
    x_train, y_train = _pair(files["train_images"], files["train_labels"], limit_train)
    x_test, y_test = _pair(files["test_images"], files["test_labels"], limit_test)
    if x_train.shape[1] != x_test.shape[1]:
        raise DataError(f"{files['test_images']}: {x_test.shape[1]} values per image, "
                        f"but {files['train_images']} has {x_train.shape[1]}")
    if standardize:
        x_train, x_test = standardize_features(x_train, x_test)
    num_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
    return Dataset("idx", "classification", x_train, y_train, x_test, y_test, num_classes)
