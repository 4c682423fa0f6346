"""Measurements the gradient presets share: reading per-layer series back, seed statistics, and
quantities computed after the fact with the engine from saved parameters (layer Jacobians).

The presets ``vanishing``, ``exploding``, ``he_vs_xavier``, ``sgd_vs_adam``, ``lr_failure`` and
``mean_field`` use these; nothing here trains.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from threadpoolctl import threadpool_limits

from testbed.data.dataset import LOSSES as TASK_LOSS
from testbed.engine import MLP, Backend, MLPSpec, init_params
from testbed.tracking.sweep import Run

NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def number(value) -> float:
    """A metric value as a float; the strings "nan", "inf", "-inf" of metrics.jsonl as such; None -> nan."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        return NON_FINITE.get(value, math.nan)
    return float(value)


def series(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric over a run's logged rows (rows without it are skipped)."""
    rows = [r for r in run.metrics if key in r]
    return (np.array([r["step"] for r in rows], dtype=float),
            np.array([number(r[key]) for r in rows], dtype=float))


def eval_series(run: Run, key: str = "test/loss") -> tuple[np.ndarray, np.ndarray]:
    """(updates applied, values) of an evaluation metric (test/loss, test/acc).

    The run loop evaluates before the step's update: the row of step k shows the net after k updates
    (step 0: at initialisation).
    """
    return series(run, key)


def row_at(run: Run, step: int = 0) -> dict:
    """The logged row of ``step`` (step 0: the initialisation)."""
    for row in run.metrics:
        if row.get("step") == step and "status" not in row:
            return row
    raise KeyError(f"{run.path}: no metrics row at step {step}")


def num_layers(run: Run) -> int:
    return int(run.get("model.depth")) + 1


def layer_profile(run: Run, key: str = "grad_norm/s", step: int = 0, layers: Iterable[int] | None = None
                  ) -> np.ndarray:
    """``key/L{l}`` at one logged step for layers l (default: all, 1..L)."""
    row = row_at(run, step)
    layers = range(1, num_layers(run) + 1) if layers is None else layers
    return np.array([number(row.get(f"{key}/L{layer}")) for layer in layers], dtype=float)


def weight_grad_rms(run: Run, step: int = 0, widths: list[int] | None = None) -> np.ndarray:
    """Per-element RMS of dL/dW^l, ||dL/dW^l|| / sqrt(fan_out fan_in), for every layer: the "weight
    gradient variance" of Glorot & Bengio's Figs. 8-9 (norms alone differ with the matrices' sizes)."""
    sizes = widths or layer_sizes(run)
    norms = layer_profile(run, "grad_norm/W", step)
    return norms / np.sqrt(np.array([a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)], float))


def layer_sizes(run: Run, in_features: int | None = None, out_features: int | None = None) -> list[int]:
    """[n_0 (input), n_1, ..., n_L] of a run's MLP, from its saved config (digits: 64 in, 10 out)."""
    if in_features is None or out_features is None:
        from testbed.data import load_dataset

        data = load_dataset(str(run.get("data.name")), seed=int(run.get("data.seed", 0)),
                            **dict(run.get("data.options") or {}))
        in_features, out_features = data.in_features, data.out_features
    depth, width = int(run.get("model.depth")), int(run.get("model.width"))
    return [in_features] + [width] * depth + [out_features]


def spec_of(run: Run, in_features: int, out_features: int, loss: str = "cross_entropy") -> MLPSpec:
    """The MLPSpec a run trained (for rebuilding its net from params_*.npz)."""
    m = run.config["model"]
    return MLPSpec(in_features=in_features, out_features=out_features, depth=m["depth"], width=m["width"],
                   activation=m["activation"], activation_params=dict(m.get("activation_params") or {}),
                   init=m["init"], init_scale=m["init_scale"], init_params=dict(m.get("init_params") or {}),
                   bias_init=m["bias_init"], bias_std=m["bias_std"], loss=loss)


_DATASETS: dict = {}


def dataset_of(run: Run):
    """The run's data set (cached by name, seed and options)."""
    from testbed.data import load_dataset

    options = dict(run.get("data.options") or {})
    key = (str(run.get("data.name")), int(run.get("data.seed", 0)), tuple(sorted(options.items())))
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(key[0], seed=key[1], **options)
    return _DATASETS[key]


_INITIAL_LOSS: dict = {}


def initial_loss(run: Run, split: str = "test") -> float:
    """The loss on a whole split at initialisation, recomputed with the engine (numpy, float64).

    The step-0 row's test/loss is the same quantity in the run's own dtype; this recomputation also
    covers the train split and runs that diverged before logging. The initial parameters are
    ``init_params(spec, seed)``, as the run drew them.
    """
    data = dataset_of(run)
    loss_name = TASK_LOSS[data.task]
    spec = spec_of(run, data.in_features, data.out_features, loss_name)
    key = (repr(spec), int(run.get("seed")), split, str(run.get("data.name")))
    if key not in _INITIAL_LOSS:
        backend = Backend("numpy", "float64")
        net = MLP(spec, {k: backend.asarray(v) for k, v in init_params(spec, int(run.get("seed"))).items()})
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        target = backend.labels(y) if loss_name == "cross_entropy" else backend.asarray(y)
        _INITIAL_LOSS[key] = float(net.loss(backend.asarray(x), target))
    return _INITIAL_LOSS[key]


def layer_jacobian_singular_values(spec: MLPSpec, params: dict, x: np.ndarray) -> list[np.ndarray]:
    """Singular values of the hidden-to-hidden Jacobians J^l = d a^{l+1} / d a^l, per example.

    Glorot & Bengio 2010, Sec. 4.2.1: J^l = diag(phi'(s^{l+1})) W^{l+1} for a^{l+1} = phi(W^{l+1} a^l +
    b^{l+1}). The forward pass and phi' come from the engine (numpy, float64): phi'(s) is the activation's
    backward applied to a gradient of ones. Returns one (N, min(n_{l+1}, n_l)) array per l = 1..depth-1
    (empty list for depth < 2); x is (N, in_features).
    """
    backend = Backend("numpy", "float64")
    net = MLP(spec, {k: backend.asarray(np.asarray(v, dtype=np.float64)) for k, v in params.items()})
    net.forward(backend.asarray(x))
    values = []
    for layer in range(1, spec.depth):  # J^l maps a^l (layer l's output) to a^{l+1}
        s_next = net.pre_activations[layer]  # s^{l+1}, (N, n_{l+1})
        _, cache = net.activation.forward(s_next)
        slope = net.activation.backward(np.ones_like(s_next), cache)  # phi'(s^{l+1})
        jacobians = slope[:, :, None] * np.asarray(net.params[f"W{layer + 1}"])[None]  # (N, n_{l+1}, n_l)
        with threadpool_limits(1):  # a batch of small SVDs: threads only contend (10x slower on 2 cores)
            values.append(np.linalg.svd(jacobians, compute_uv=False))
    return values


def by_optimiser_and_rate(runs: list[Run], optimiser_of, order: list[str]) -> tuple[dict, list, list]:
    """A learning-rate grid sweep grouped: {(optimiser, lr): runs}, the optimisers present (in
    ``order``), and the rates present (ascending). ``optimiser_of(run)`` names a run's optimiser."""
    by: dict = {}
    for run in runs:
        by.setdefault((optimiser_of(run), float(run.get("optim.lr"))), []).append(run)
    return by, [o for o in order if any(key[0] == o for key in by)], sorted({key[1] for key in by})


def best_rates(by: dict, optimisers: list[str], lrs: list[float], score) -> dict[str, float]:
    """Each optimiser's rate with the lowest seed-mean ``score(run)`` (rates whose mean is not
    finite left out; a tie goes to the smaller rate)."""
    best = {}
    for optimiser in optimisers:
        scored = [(np.mean([score(r) for r in by[(optimiser, lr)]]), lr)
                  for lr in lrs if (optimiser, lr) in by]
        scored = [s for s in scored if math.isfinite(s[0])]
        if scored:
            best[optimiser] = min(scored)[1]
    return best


def geomean(values) -> float:
    """Geometric mean of positive numbers (nan if any is not positive or finite)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        return math.nan
    return float(np.exp(np.mean(np.log(values))))


def mean_std(values) -> tuple[float, float]:
    """Mean and (population) standard deviation over seeds."""
    values = np.asarray(values, dtype=float)
    return float(np.mean(values)), float(np.std(values))


def fraction(flags) -> float:
    flags = list(flags)
    return sum(bool(f) for f in flags) / len(flags) if flags else math.nan


def slope(y: np.ndarray, x: np.ndarray | None = None) -> float:
    """Least-squares slope of y against x (default 1, 2, ...)."""
    y = np.asarray(y, dtype=float)
    x = np.arange(1, len(y) + 1, dtype=float) if x is None else np.asarray(x, dtype=float)
    return float(np.polyfit(x, y, 1)[0])


def fmt(x: float, digits: int = 3) -> str:
    """A number for the report: fixed for ordinary sizes, scientific for tiny or huge ones."""
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e4):
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}g}"
