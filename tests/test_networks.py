"""Whole networks against the torch.nn reference: every activation x init x loss x depth.

For each case one forward and backward of the engine's MLP and of ``build_torch_mlp`` (torch
autograd) from the same spec, weights, inputs and targets; compared per tensor: the loss, the
output, every dW^l and db^l, dL/dx, and every dL/ds^l (read from the reference with retain_grad
on each Linear's output). float64, relative error <= 1e-10, on both engine backends and every
device. Width 7, batch 5, 4 inputs, 3 outputs: small enough that the full grid of
12 activations x 11 inits x 3 losses x depths {1, 3, 8} x backends runs in seconds; the loop
over inits and depths is inside each test, which names every failing combination.

One combination is special: constant weights under softmax cross-entropy make every gradient
below the output layer zero by symmetry (``helpers.zero_by_symmetry``): those tensors are
checked to be rounding noise, not compared by relative error. (A zero by coincidence cannot
occur: with zero weights and biases every prediction is uniform and dL/db^L is the batch mean of
1/3 - onehot(y), which vanishes only for balanced labels, impossible in a batch of 5.)
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import NETWORK_TOL, Backend, backend_params, compare_network

from testbed.engine import ACTIVATIONS, LOSSES, MLP, WEIGHT_INITS, MLPSpec
from testbed.engine.backend import to_numpy

ACTIVATION_NAMES = [*ACTIVATIONS, "gelu_tanh"]
# non-default parameters, so that a parameter the reference drops would show
ACTIVATION_PARAMS = {"leaky_relu": {"slope": 0.2}, "elu": {"alpha": 0.7},
                     "softplus": {"beta": 2.0, "threshold": 3.0}}
DEPTHS = (1, 3, 8)
BIAS_INIT = {1: dict(bias_init="zeros"), 3: dict(bias_init="normal", bias_std=0.3),
             8: dict(bias_init="standard")}


def network_spec(activation: str, init: str, loss: str, depth: int) -> MLPSpec:
    return MLPSpec(in_features=4, out_features=3, depth=depth, width=7, activation=activation,
                   activation_params=ACTIVATION_PARAMS.get(activation, {}), init=init, loss=loss,
                   **BIAS_INIT[depth])


@pytest.mark.parametrize("backend", backend_params(dtypes=("float64",)))
@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_network_gradients_match_torch(activation, loss, backend):
    tol = NETWORK_TOL[backend.dtype]
    failures = []
    for init in WEIGHT_INITS:
        for depth in DEPTHS:
            errors = compare_network(network_spec(activation, init, loss, depth), backend)
            worst = max(errors, key=errors.get)
            if errors[worst] > tol:
                failures.append(f"{init} depth {depth}: {worst} {errors[worst]:.3g}")
    assert not failures, f"relative error > {tol:g}:\n" + "\n".join(failures)


def test_every_quantity_is_compared():
    errors = compare_network(network_spec("tanh", "xavier_uniform", "mse", 3), Backend("numpy", "float64"))
    layers = range(1, 5)
    expected = {"loss", "output", "dx"} | {f"{kind}{n}" for n in layers for kind in ("dW", "db", "ds")}
    assert set(errors) == expected


def test_zero_by_symmetry_is_checked_not_skipped():
    """Constant weights under cross-entropy: the lower gradients are compared as rounding noise,
    the output layer's by relative error."""
    spec = network_spec("sigmoid", "constant", "cross_entropy", 3)
    errors = compare_network(spec, Backend("numpy", "float64"))
    assert set(errors) == {"loss", "output", "dW4", "db4", "ds4"}
    assert max(errors.values()) <= NETWORK_TOL["float64"]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_a_pass_without_record_gives_the_same_gradients_and_keeps_nothing_else(backend, activation):
    """``record=False`` (a training step that logs nothing): the same loss, grads and dL/dx, bitwise,
    and afterwards the net holds no s^l, a^l, dL/ds^l or cache of the pass; ``record=True`` after
    it keeps them all again."""
    spec = MLPSpec(in_features=4, out_features=3, depth=3, width=7, activation=activation)
    be = Backend(backend, "float64")
    rng = np.random.default_rng(0)
    x, y = be.asarray(rng.normal(size=(5, 4))), be.labels(rng.integers(0, 3, 5))
    kept, lean = MLP.create(spec, seed=1, backend=be), MLP.create(spec, seed=1, backend=be)
    loss_kept, grads_kept = kept.loss_and_grads(x, y, input_grad=True)
    loss_lean, grads_lean = lean.loss_and_grads(x, y, input_grad=True, record=False)
    assert float(loss_lean) == float(loss_kept)
    assert grads_lean.keys() == grads_kept.keys()
    for key in grads_kept:
        assert np.array_equal(to_numpy(grads_lean[key]), to_numpy(grads_kept[key])), key
    assert np.array_equal(to_numpy(lean.input_grad), to_numpy(kept.input_grad))
    assert not (lean.pre_activations or lean.activations or lean.pre_activation_grads or lean._caches)
    assert [len(kept.pre_activations), len(kept.activations), len(kept.pre_activation_grads)] == [4, 3, 4]
    lean.loss_and_grads(x, y)
    for mine, theirs in zip(lean.pre_activation_grads, kept.pre_activation_grads, strict=True):
        assert np.array_equal(to_numpy(mine), to_numpy(theirs))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("replicas, lrs", [(None, None), (3, None), (3, [0.3, 0.05, 1.0])],
                         ids=["one", "stack", "stack-own-lrs"])
def test_sgd_step_equals_backward_then_the_sgd_update(backend, replicas, lrs):
    """``MLP.sgd_step`` (each weight's update fused into its gradient's matrix product) against
    ``loss_and_grads`` then ``SGD.step``, three steps: one model, a stack of 3 at one learning rate,
    and a stack with its own rate per replica. At one rate on numpy, where the product is formed
    either way, everything bitwise; on torch the first step's loss and biases bitwise and its
    weights to rounding. Per-replica rates scale dL/d(output) instead: to rounding from the first
    step. Later steps start from weights that differ by that rounding: to rounding. The net keeps
    no gradients, caches or activations afterwards."""
    from testbed.engine import get_optimizer, init_params, init_replica_params

    spec = MLPSpec(in_features=4, out_features=3, depth=3, width=7, activation="tanh",
                   bias_init="normal", bias_std=0.3)
    be = Backend(backend, "float64")
    rng = np.random.default_rng(0)
    lead = () if replicas is None else (replicas,)
    x, y = be.asarray(rng.normal(size=(*lead, 5, 4))), be.labels(rng.integers(0, 3, (*lead, 5)))
    initial = init_params(spec, 1) if replicas is None else init_replica_params(spec, [1, 2, 3])
    fused, plain = (MLP(spec, {k: be.asarray(v) for k, v in initial.items()}) for _ in range(2))
    optimizer = get_optimizer("sgd", lr=0.3 if lrs is None else be.asarray(lrs))
    for step in range(3):  # the later steps start from weights that differ by rounding (torch)
        loss_fused = fused.sgd_step(x, y, optimizer.fused_lr())
        loss_plain, grads = plain.loss_and_grads(x, y, record=False)
        optimizer.step(plain.params, grads)
        same_start = step == 0 or (backend == "numpy" and lrs is None)  # the same weights going in
        assert _same(loss_fused, loss_plain, exact=same_start)
        for key, value in plain.params.items():
            exact = lrs is None and (backend == "numpy" or (same_start and key.startswith("b")))
            assert _same(fused.params[key], value, exact), (step, key)
            assert not np.array_equal(to_numpy(value), initial[key]), key  # every parameter moved
    assert not (fused.grads or fused._caches or fused.activations or fused.pre_activation_grads)


def _same(a, b, exact: bool) -> bool:
    a, b = to_numpy(a), to_numpy(b)
    return bool(np.array_equal(a, b) if exact else np.linalg.norm(a - b) <= 1e-14 * np.linalg.norm(b))


def test_the_readme_engine_example_runs():
    """The README's engine example, as written there: it trains (the loss goes down)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("## The engine", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(code, scope)
    net, x, y, loss = scope["net"], scope["x"], scope["y"], scope["loss"]
    assert float(net.loss(x, y)) < float(loss)
