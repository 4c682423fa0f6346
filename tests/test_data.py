"""Tests of testbed.data: every data set, the IDX reader/writer and the resumable BatchSampler."""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from testbed.data import DATASETS, BatchSampler, DataError, Dataset, load_dataset, read_idx, write_idx
from testbed.data import mnist1d as mnist1d_module
from testbed.data.digits import split_indices

SYNTHETIC = ["teacher", "spirals", "sine", "blobs"]  # seeded; xor is deterministic
LOSS = {"classification": "cross_entropy", "regression": "mse", "binary": "bce_with_logits"}


def arrays(ds: Dataset) -> list[np.ndarray]:
    return [ds.x_train, ds.y_train, ds.x_test, ds.y_test]


def identical(a: Dataset, b: Dataset) -> bool:
    """Bit-identical arrays (same dtype, shape and bytes)."""
    return all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for x, y in zip(arrays(a), arrays(b), strict=True)
    )


def check_contract(ds: Dataset) -> None:
    """The documented shape/dtype contract of a Dataset."""
    assert ds.task in LOSS and ds.loss == LOSS[ds.task]
    for x, y in [(ds.x_train, ds.y_train), (ds.x_test, ds.y_test)]:
        assert x.dtype == np.float64 and x.ndim == 2 and x.shape[1] == ds.in_features
        assert len(y) == len(x) > 0
        assert np.isfinite(x).all()
        if ds.task == "classification":
            assert y.dtype == np.int64 and y.ndim == 1
            assert 0 <= y.min() and y.max() < ds.num_classes == ds.out_features
        else:
            assert y.dtype == np.float64 and y.ndim == 2 and y.shape[1] == ds.out_features
            assert np.isfinite(y).all()
        if ds.task == "binary":
            assert set(np.unique(y)) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def mnist1d_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset, bool]:
    """Build MNIST-1D once for the module into a private cache dir; also report whether the build left
    the global `random` and `np.random` streams where they were (the generator reseeds them)."""
    cache = tmp_path_factory.mktemp("cache")
    random.seed(123)
    np.random.seed(123)
    expected = random.random(), np.random.random()
    random.seed(123)
    np.random.seed(123)
    ds = load_dataset("mnist1d", cache_dir=cache)
    return cache, ds, (random.random(), np.random.random()) == expected


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A directory with a tiny MNIST-like set in the four standard files (two of them gzipped)."""
    rng = np.random.default_rng(0)
    data = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 3, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.permutation(np.arange(12) % 5).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (7, 3, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(7) % 5).astype(np.uint8),
    }
    root = tmp_path_factory.mktemp("idx")
    for i, (name, array) in enumerate(data.items()):
        write_idx(root / (name + (".gz" if i % 2 else "")), array)
    return root, data


# --------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", [n for n in DATASETS if n not in ("mnist1d", "idx")])
def test_every_generated_dataset_meets_the_contract(name: str) -> None:
    ds = load_dataset(name)
    assert ds.name == name
    check_contract(ds)


def test_registry_lists_the_documented_names() -> None:
    assert DATASETS == ("digits", "mnist1d", "teacher", "spirals", "xor", "sine", "blobs", "idx")


@pytest.mark.parametrize("name", DATASETS)
def test_unknown_option_names_option_and_allowed_ones(name: str) -> None:
    with pytest.raises(ValueError) as info:
        load_dataset(name, bogus_option=1)
    message = str(info.value)
    assert "\n" not in message and "'bogus_option'" in message and "allowed:" in message


def test_unknown_dataset_message_lists_all_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'foo'") as info:
        load_dataset("foo")
    assert "\n" not in str(info.value)
    assert all(name in str(info.value) for name in DATASETS)


@pytest.mark.parametrize(
    ("name", "opts"),
    [
        ("spirals", {"n_train": 0}),
        ("blobs", {"spread": -1.0}),
        ("sine", {"function": "cos"}),
        ("teacher", {"teacher_depth": -1}),
        ("xor", {"encoder": 1}),
        ("digits", {"test_fraction": 1.0}),
    ],
)
def test_bad_option_values_raise(name: str, opts: dict) -> None:
    with pytest.raises(ValueError):
        load_dataset(name, **opts)


def test_negative_seed_raises() -> None:
    with pytest.raises(ValueError, match="seed"):
        load_dataset("spirals", seed=-1)


# ----------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", SYNTHETIC + ["digits", "xor"])
def test_same_seed_same_arrays(name: str) -> None:
    assert identical(load_dataset(name, seed=3), load_dataset(name, seed=3))


@pytest.mark.parametrize("name", SYNTHETIC)
def test_different_seed_different_training_data(name: str) -> None:
    a, b = load_dataset(name, seed=0), load_dataset(name, seed=1)
    assert not np.array_equal(a.x_train, b.x_train)


def test_digits_split_depends_on_seed() -> None:
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert not np.array_equal(a.y_train, b.y_train)


def test_test_set_does_not_depend_on_n_train() -> None:
    for name in ["teacher", "spirals", "blobs"]:
        a, b = load_dataset(name, n_train=16), load_dataset(name, n_train=32)
        assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_test, b.y_test)


# ---------------------------------------------------------------------------------------- synthetic sets


def test_teacher_targets_come_from_one_function() -> None:
    shape = {"in_features": 3, "out_features": 2, "teacher_width": 5, "teacher_depth": 2}
    clean = load_dataset("teacher", **shape)
    assert clean.x_train.shape == (1024, 3) and clean.y_train.shape == (1024, 2)
    noisy = load_dataset("teacher", **shape, noise=0.5)
    residual = noisy.y_train - clean.y_train
    assert np.array_equal(noisy.x_train, clean.x_train)
    assert 0.4 < residual.std() < 0.6
    assert np.array_equal(noisy.y_test, clean.y_test)  # test targets are noiseless
    linear = load_dataset("teacher", teacher_depth=0, in_features=4)
    design = np.c_[linear.x_train, np.ones(len(linear.x_train))]
    coef = np.linalg.lstsq(design, linear.y_train, rcond=None)[0]
    np.testing.assert_allclose(design @ coef, linear.y_train, atol=1e-10)  # depth 0: an exact affine map
    assert np.abs(clean.y_train - clean.y_train.mean(0)).max() > 0.1  # not a constant function


def test_sine_functions_and_grid() -> None:
    for function, f in [("sin", lambda x: np.sin(2 * np.pi * x)), ("abs", np.abs)]:
        ds = load_dataset("sine", function=function, n_test=11)
        np.testing.assert_allclose(ds.x_test[:, 0], np.linspace(-1, 1, 11))
        np.testing.assert_allclose(ds.y_train, f(ds.x_train))
        np.testing.assert_allclose(ds.y_test, f(ds.x_test))
        assert np.abs(ds.x_train).max() <= 1
    step = load_dataset("sine", function="step")
    assert np.array_equal(step.y_train, np.where(step.x_train >= 0, 1.0, -1.0))


def test_spirals_are_two_balanced_classes_within_radius() -> None:
    ds = load_dataset("spirals", noise=0.0, n_train=101, turns=2.0)
    assert ds.num_classes == 2 and np.bincount(ds.y_train).tolist() == [51, 50]
    # without noise each point lies on its class's arm: radius r at angle 2 pi turns r + pi label
    r = np.linalg.norm(ds.x_train, axis=1)
    angle = 2 * np.pi * 2.0 * r + np.pi * ds.y_train
    np.testing.assert_allclose(ds.x_train, r[:, None] * np.c_[np.cos(angle), np.sin(angle)], atol=1e-12)
    assert r.max() <= 1
    noisy = load_dataset("spirals", noise=0.1, n_train=101, turns=2.0)
    assert 0.05 < np.abs(noisy.x_train - ds.x_train).std() < 0.2


def test_blobs_points_sit_near_their_centres() -> None:
    ds = load_dataset("blobs", num_classes=3, in_features=5, spread=0.01, n_train=30, n_test=9)
    assert ds.in_features == 5 and ds.out_features == 3
    for c in range(3):
        train, test = ds.x_train[ds.y_train == c], ds.x_test[ds.y_test == c]
        assert len(train) == 10 and len(test) == 3
        assert np.abs(train - train.mean(0)).max() < 0.1
        assert np.abs(test.mean(0) - train.mean(0)).max() < 0.1  # same centres in both splits


def test_xor_and_encoder() -> None:
    ds = load_dataset("xor", n_repeat=3)
    assert ds.task == "binary" and ds.x_train.shape == (12, 2) and ds.y_train.shape == (12, 1)
    assert np.array_equal(ds.y_train[:, 0], np.logical_xor(ds.x_train[:, 0], ds.x_train[:, 1]))
    assert ds.x_test.shape == (4, 2) and len(np.unique(ds.x_test, axis=0)) == 4
    enc = load_dataset("xor", encoder=8)
    assert enc.task == "binary" and enc.in_features == 8 and enc.out_features == 8
    assert np.array_equal(enc.x_train, np.eye(8)) and np.array_equal(enc.y_train, enc.x_train)
    assert np.array_equal(enc.x_test, enc.x_train)


# ---------------------------------------------------------------------------------------------- digits


def test_digits_standardised_with_train_statistics() -> None:
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1347, 64) and ds.x_test.shape == (450, 64) and ds.num_classes == 10
    std = ds.x_train.std(axis=0)
    varying = std > 0
    assert 0 < varying.sum() < 64  # some border pixels are constant in the training set
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(std[varying], 1.0)
    assert np.isfinite(ds.x_test).all()


def test_digits_split_is_stratified_disjoint_and_complete() -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    train, test = split_indices(y, 0.25, seed=5)
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.union1d(train, test), np.arange(len(y)))
    expected = np.bincount(y) * 0.25
    assert np.abs(np.bincount(y[test]) - expected).max() <= 1  # per-class share within one example
    ds = load_dataset("digits", seed=5)
    assert np.array_equal(ds.y_train, y[train]) and np.array_equal(ds.y_test, y[test])
    mean, std = x[train].mean(0), x[train].std(0)
    std[std == 0] = 1
    np.testing.assert_allclose(ds.x_test, (x[test] - mean) / std)


# --------------------------------------------------------------------------------------------- mnist1d


def test_mnist1d_shapes_and_cache(mnist1d_cache, monkeypatch) -> None:
    cache, first, _ = mnist1d_cache
    check_contract(first)
    assert first.x_train.shape == (4000, 40) and first.x_test.shape == (1000, 40)
    assert first.num_classes == 10 and set(np.unique(first.y_train)) == set(range(10))
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temporary file left behind

    def no_build():
        raise AssertionError("the second load must read the cache")

    monkeypatch.setattr(mnist1d_module, "build", no_build)
    assert identical(load_dataset("mnist1d", cache_dir=cache), first)


def test_mnist1d_standardize_uses_train_statistics(mnist1d_cache) -> None:
    cache, raw, _ = mnist1d_cache
    ds = load_dataset("mnist1d", cache_dir=cache, standardize=True)
    np.testing.assert_allclose(ds.x_train.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(ds.x_train.std(0), 1)
    mean, std = raw.x_train.mean(0), raw.x_train.std(0)
    np.testing.assert_allclose(ds.x_test, (raw.x_test - mean) / std)


def test_mnist1d_env_cache_dir_and_corrupt_cache_rebuilt(mnist1d_cache, tmp_path, monkeypatch) -> None:
    cache, first, _ = mnist1d_cache
    (cached,) = cache.iterdir()
    (tmp_path / cached.name).write_bytes(b"not a zip file")
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    keys = ["x_train", "y_train", "x_test", "y_test"]
    monkeypatch.setattr(mnist1d_module, "build", lambda: dict(zip(keys, arrays(first), strict=True)))
    assert identical(load_dataset("mnist1d"), first)
    assert np.load(tmp_path / cached.name)["x_train"].shape == (4000, 40)  # rewritten


def test_mnist1d_build_restores_global_random_state(mnist1d_cache) -> None:
    assert mnist1d_cache[2]


# ------------------------------------------------------------------------------------------------- idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path: Path, dtype, suffix: str) -> None:
    array = (np.arange(2 * 3 * 5) * 7 % 100 - (0 if dtype == np.uint8 else 50)).astype(dtype).reshape(2, 3, 5)
    path = tmp_path / f"a{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.dtype.isnative and np.array_equal(back, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_idx_header_is_big_endian(tmp_path: Path) -> None:
    write_idx(tmp_path / "a", np.array([1, 258], dtype=np.int16))
    assert (tmp_path / "a").read_bytes() == bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0, 1, 1, 2])


def test_gzip_is_detected_by_magic_not_extension(tmp_path: Path) -> None:
    write_idx(tmp_path / "a.gz", np.arange(6, dtype=np.uint8))
    (tmp_path / "a.gz").rename(tmp_path / "plain-name")
    assert np.array_equal(read_idx(tmp_path / "plain-name"), np.arange(6))


def test_write_idx_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="int64"):
        write_idx(tmp_path / "a", np.arange(3, dtype=np.int64))


@contextmanager
def raises_naming(path: Path, match: str) -> Iterator[pytest.ExceptionInfo]:
    """pytest.raises for a one-line DataError that names `path` and matches `match`."""
    with pytest.raises(DataError, match=match) as info:
        yield info
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_idx_errors_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good"
    write_idx(good, np.zeros((4, 2, 2), dtype=np.uint8))
    raw = good.read_bytes()

    with raises_naming(tmp_path / "missing", "does not exist"):
        read_idx(tmp_path / "missing")

    bad_magic = tmp_path / "bad_magic"
    bad_magic.write_bytes(b"\x01\x02" + raw[2:])
    with raises_naming(bad_magic, "magic"):
        read_idx(bad_magic)

    bad_code = tmp_path / "bad_code"
    bad_code.write_bytes(raw[:2] + b"\x07" + raw[3:])
    with raises_naming(bad_code, "magic"):
        read_idx(bad_code)

    for cut, what in [(len(raw) - 1, "truncated"), (8, "header"), (2, "header")]:
        short = tmp_path / f"short{cut}"
        short.write_bytes(raw[:cut])
        with raises_naming(short, what):
            read_idx(short)

    short_gz = tmp_path / "short.gz"
    short_gz.write_bytes(gzip.compress(raw[:-3]))
    with raises_naming(short_gz, "truncated"):
        read_idx(short_gz)

    cut_stream = tmp_path / "cut_stream.gz"
    cut_stream.write_bytes(gzip.compress(raw)[:-10])
    with raises_naming(cut_stream, "gzip"):
        read_idx(cut_stream)

    trailing = tmp_path / "trailing"
    trailing.write_bytes(raw + b"\x00")
    with raises_naming(trailing, "unexpected bytes"):
        read_idx(trailing)


def test_idx_dataset_from_directory(idx_dir) -> None:
    root, data = idx_dir
    ds = load_dataset("idx", path=root)
    check_contract(ds)
    assert ds.x_train.shape == (12, 12) and ds.x_test.shape == (7, 12) and ds.num_classes == 5
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1
    np.testing.assert_array_equal(ds.x_train * 255, data["train-images-idx3-ubyte"].reshape(12, 12))
    assert np.array_equal(ds.y_test, data["t10k-labels-idx1-ubyte"])
    limited = load_dataset("idx", path=root, limit_train=5, limit_test=2)
    assert np.array_equal(limited.x_train, ds.x_train[:5]) and len(limited.y_test) == 2
    standard = load_dataset("idx", path=root, standardize=True)
    assert np.abs(standard.x_train.mean(0)).max() < 1e-12


def test_idx_explicit_files_override_directory(idx_dir, tmp_path: Path) -> None:
    root, data = idx_dir
    labels = tmp_path / "my-labels"
    write_idx(labels, np.full(7, 9, dtype=np.uint8))
    ds = load_dataset("idx", path=root, test_labels=labels)
    assert np.array_equal(ds.y_test, np.full(7, 9)) and ds.num_classes == 10


def test_idx_dataset_errors(idx_dir, tmp_path: Path) -> None:
    root, _ = idx_dir
    labels = tmp_path / "five-labels"
    write_idx(labels, np.zeros(5, dtype=np.uint8))
    with raises_naming(labels, "5 labels"):
        load_dataset("idx", path=root, train_labels=labels)

    negative = tmp_path / "negative-labels"
    write_idx(negative, np.array([0, -1, 2, 0, 1, 1, 0], dtype=np.int8))
    with raises_naming(negative, "out of range"):
        load_dataset("idx", path=root, test_labels=negative)

    with raises_naming(tmp_path / "train-images-idx3-ubyte", "does not exist"):
        load_dataset("idx", path=tmp_path)
    with pytest.raises(DataError, match="path"):
        load_dataset("idx")


# --------------------------------------------------------------------------------------------- sampler


def take(sampler: BatchSampler, n: int) -> list[np.ndarray]:
    return [sampler.next() for _ in range(n)]


@pytest.mark.parametrize(
    ("n", "batch", "drop_last"), [(10, 3, False), (10, 3, True), (12, 4, False), (7, 1, False)]
)
def test_each_epoch_visits_every_index_once(n: int, batch: int, drop_last: bool) -> None:
    sampler = BatchSampler(n, batch, seed=1, drop_last=drop_last)
    orders = []
    for epoch in range(3):
        assert sampler.epoch == epoch and sampler.position == 0
        batches = take(sampler, sampler.batches_per_epoch)
        assert all(b.dtype == np.int64 for b in batches)
        assert all(len(b) == batch for b in batches[:-1])
        seen = np.concatenate(batches)
        if drop_last:
            assert len(seen) == n - n % batch and len(np.unique(seen)) == len(seen)
        else:
            assert np.array_equal(np.sort(seen), np.arange(n))
        assert np.array_equal(seen, np.random.default_rng([1, epoch]).permutation(n)[: len(seen)])
        orders.append(seen)
    assert not np.array_equal(orders[0], orders[1])  # a fresh permutation each epoch


def test_batches_per_epoch() -> None:
    assert BatchSampler(10, 3, 0).batches_per_epoch == 4
    assert BatchSampler(10, 3, 0, drop_last=True).batches_per_epoch == 3
    assert BatchSampler(10, 5, 0, drop_last=True).batches_per_epoch == 2


def test_state_dict_resumes_the_same_sequence() -> None:
    reference = take(BatchSampler(11, 4, seed=7), 20)
    sampler = BatchSampler(11, 4, seed=7)
    take(sampler, 5)
    state = sampler.state_dict()
    assert state["epoch"] == 1 and state["position"] == 8
    resumed = BatchSampler(11, 4, seed=7)
    resumed.load_state_dict(dict(state))
    for expected, got in zip(reference[5:], take(resumed, 15), strict=True):
        assert np.array_equal(expected, got)


def test_load_state_dict_rejects_other_configuration() -> None:
    state = BatchSampler(11, 4, seed=7).state_dict()
    with pytest.raises(ValueError, match="seed"):
        BatchSampler(11, 4, seed=8).load_state_dict(state)
    with pytest.raises(ValueError, match="position"):
        BatchSampler(11, 4, seed=7).load_state_dict({**state, "position": 3})


def test_full_batch_and_single_example_batches() -> None:
    full = BatchSampler(5, 100, seed=0)
    assert full.batch_size == 5 and full.batches_per_epoch == 1
    first, second = full.next(), next(iter(full))
    assert np.array_equal(np.sort(first), np.arange(5)) and np.array_equal(np.sort(second), np.arange(5))
    assert full.epoch == 2
    single = BatchSampler(3, 1, seed=0)
    assert [len(b) for b in take(single, 6)] == [1] * 6 and single.epoch == 2


@pytest.mark.parametrize("batch", [0, -1])
def test_bad_batch_size_raises(batch: int) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(10, batch, seed=0)
