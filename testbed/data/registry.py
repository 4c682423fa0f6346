"""`load_dataset`: every data set by name, with its options checked against the loader's signature."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from .dataset import Dataset, check_int
from .digits import digits
from .idx import idx
from .mnist1d import mnist1d
from .synthetic import blobs, sine, spirals, teacher, xor

LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": digits,
    "mnist1d": mnist1d,
    "teacher": teacher,
    "spirals": spirals,
    "xor": xor,
    "sine": sine,
    "blobs": blobs,
    "idx": idx,
}
DATASETS: tuple[str, ...] = tuple(LOADERS)


def options(name: str) -> dict[str, object]:
    """The options data set `name` accepts, with their defaults."""
    params = list(inspect.signature(LOADERS[name]).parameters.values())[1:]  # after `seed`
    return {p.name: p.default for p in params}


def load_dataset(name: str, seed: int = 0, **opts: object) -> Dataset:
    """Data set `name` built from `seed` and `opts`; the same arguments give bit-identical arrays.

    Unknown names and options raise a one-line ValueError listing what is allowed.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    unknown = sorted(set(opts) - set(options(name)))
    if unknown:
        allowed = ", ".join(options(name)) or "none"
        unknown_list = ", ".join(map(repr, unknown))
        plural = "s" if len(unknown) > 1 else ""
        raise ValueError(f"unknown option{plural} {unknown_list} for dataset {name!r}; allowed: {allowed}")
    return LOADERS[name](check_int("seed", seed, 0), **opts)
