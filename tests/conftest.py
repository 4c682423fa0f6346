"""Shared pytest setup: the ``cuda`` marker skips where no GPU is, and xdist workers use one
thread each."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist every worker would start one torch (OpenMP) and one OpenBLAS thread per
    # core: n workers x n threads oversubscribe the cores, and OpenMP's spin-waiting then makes
    # the many tiny tensor ops of these tests several times slower. One thread per worker.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
