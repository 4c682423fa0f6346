"""Small synthetic problems generated from a seed: teacher-student regression, spirals, XOR and the
encoder problem, 1-D function regression and Gaussian blobs.

Each loader draws its parameters, training inputs and test inputs from separate streams spawned from
`seed`, so changing `n_train` leaves the test set alone. Label noise (`noise`) goes on the training
targets only; test targets are the noiseless function, so test error measures recovery of it.
"""

from __future__ import annotations

import numpy as np

from .dataset import Dataset, check_float, check_int, rngs

FUNCTIONS = ("sin", "abs", "step")


def teacher(
    seed: int,
    *,
    in_features: int = 10,
    out_features: int = 1,
    teacher_width: int = 32,
    teacher_depth: int = 1,
    noise: float = 0.0,
    n_train: int = 1024,
    n_test: int = 512,
) -> Dataset:
    """Teacher-student regression: inputs N(0, I) through a random tanh MLP with `teacher_depth` hidden
    layers of `teacher_width` units (weights and biases N(0, 1/fan_in)) and a linear output layer."""
    d_in, d_out = check_int("in_features", in_features), check_int("out_features", out_features)
    width, depth = check_int("teacher_width", teacher_width), check_int("teacher_depth", teacher_depth, 0)
    noise = check_float("noise", noise)
    n_train, n_test = check_int("n_train", n_train), check_int("n_test", n_test)
    weights_rng, train_rng, test_rng = rngs(seed, 3)
    sizes = [d_in] + [width] * depth + [d_out]
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        std = fan_in**-0.5
        weight = weights_rng.normal(0.0, std, (fan_in, fan_out))
        layers.append((weight, weights_rng.normal(0.0, std, fan_out)))

    def forward(x: np.ndarray) -> np.ndarray:
        for w, b in layers[:-1]:
            x = np.tanh(x @ w + b)
        w, b = layers[-1]
        return x @ w + b

    x_train = train_rng.standard_normal((n_train, d_in))
    x_test = test_rng.standard_normal((n_test, d_in))
    y_train = forward(x_train) + noise * train_rng.standard_normal((n_train, d_out))
    return Dataset("teacher", "regression", x_train, y_train, x_test, forward(x_test))


def spirals(
    seed: int, *, n_train: int = 512, n_test: int = 256, noise: float = 0.1, turns: float = 1.5
) -> Dataset:
    """Two interleaved spirals in the plane, one per class, each making `turns` turns out to radius 1,
    with Gaussian noise of std `noise` on the points."""
    n_train, n_test = check_int("n_train", n_train), check_int("n_test", n_test)
    noise, turns = check_float("noise", noise), check_float("turns", turns, 1e-9)
    train_rng, test_rng = rngs(seed, 2)

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n, dtype=np.int64) % 2
        t = rng.uniform(0.0, 1.0, n)
        angle = 2 * np.pi * turns * t + np.pi * labels
        x = t[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        return x + noise * rng.standard_normal((n, 2)), labels

    return Dataset("spirals", "classification", *sample(train_rng, n_train), *sample(test_rng, n_test), 2)


def xor(seed: int, *, n_repeat: int = 1, encoder: int = 0) -> Dataset:
    """The four XOR points (task "binary", targets (4, 1)); or, with `encoder` = N > 0, the N-log2(N)-N
    encoder problem of Rumelhart, Hinton & Williams (1986): the N one-hot patterns as inputs and targets.

    Train is the patterns repeated `n_repeat` times, test the patterns once. Deterministic: `seed` is unused.
    """
    n_repeat, encoder = check_int("n_repeat", n_repeat), check_int("encoder", encoder, 0)
    if encoder == 1:
        raise ValueError("option 'encoder' must be 0 (XOR) or an integer >= 2, got 1")
    if encoder:
        x = np.eye(encoder)
        y = x.copy()
    else:
        x = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
        y = np.array([[0.0], [1.0], [1.0], [0.0]])
    return Dataset("xor", "binary", np.tile(x, (n_repeat, 1)), np.tile(y, (n_repeat, 1)), x.copy(), y.copy())


def sine(
    seed: int, *, function: str = "sin", n_train: int = 256, n_test: int = 256, noise: float = 0.0
) -> Dataset:
    """1-D regression on [-1, 1]: "sin" is sin(2 pi x), "abs" is |x|, "step" is -1 below 0 and +1 from 0 on.

    Training inputs are uniform on [-1, 1]; test inputs are a uniform grid of `n_test` points on it.
    """
    if function not in FUNCTIONS:
        raise ValueError(f"unknown function {function!r}; allowed: {', '.join(FUNCTIONS)}")
    n_train, n_test = check_int("n_train", n_train), check_int("n_test", n_test)
    noise = check_float("noise", noise)
    f = {"sin": lambda x: np.sin(2 * np.pi * x), "abs": np.abs, "step": lambda x: np.where(x >= 0, 1.0, -1.0)}
    (rng,) = rngs(seed, 1)
    x_train = rng.uniform(-1.0, 1.0, (n_train, 1))
    x_test = np.linspace(-1.0, 1.0, n_test)[:, None]
    y_train = f[function](x_train) + noise * rng.standard_normal((n_train, 1))
    return Dataset("sine", "regression", x_train, y_train, x_test, f[function](x_test))


def blobs(
    seed: int,
    *,
    num_classes: int = 4,
    in_features: int = 2,
    n_train: int = 512,
    n_test: int = 256,
    spread: float = 1.0,
) -> Dataset:
    """Gaussian blobs: `num_classes` centres drawn N(0, 3^2 I) from the seed, points around them with
    std `spread`, classes balanced (label i mod C)."""
    classes, d = check_int("num_classes", num_classes), check_int("in_features", in_features)
    n_train, n_test = check_int("n_train", n_train), check_int("n_test", n_test)
    spread = check_float("spread", spread)
    centre_rng, train_rng, test_rng = rngs(seed, 3)
    centres = centre_rng.normal(0.0, 3.0, (classes, d))

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n, dtype=np.int64) % classes
        return centres[labels] + spread * rng.standard_normal((n, d)), labels

    return Dataset("blobs", "classification", *sample(train_rng, n_train), *sample(test_rng, n_test), classes)
