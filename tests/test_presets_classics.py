"""The classic-result presets (orthogonal ... backward_cost) and their analysis helpers.

Helpers are checked against exact answers: the finite-difference Hessian-vector product against
A v of a quadratic and against torch's double backward on an MLP, power iteration against a known
spectrum, the end-to-end Jacobian of a deep linear net against the product of its weights, and
orthogonal init against singular values of 1. Every preset runs at smoke size and must return
filled-in claims and write its figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from testbed.data import load_dataset
from testbed.engine import MLPSpec, init_params
from testbed.experiments import load_preset
from testbed.experiments.analysis import (
    end_to_end_jacobian,
    flatten,
    gradient_function,
    hessian_vector_product,
    largest_rise,
    loss_along_line,
    maximise_activation,
    network,
    power_iteration,
    top_hessian_eigenvalue,
    unflatten,
)
from testbed.experiments.base import Claim
from testbed.reference.model import build_torch_loss, build_torch_mlp
from testbed.tracking.sweep import load_sweep

REPO = Path(__file__).resolve().parents[1]
SWEEP_PRESETS = ("orthogonal", "universal_approx", "minibatch_noise", "interpolation", "feature_viz",
                 "xor_encoder")
COMPUTE_PRESETS = ("random_labels", "backward_cost")


# ---------------------------------------------------------------- curvature
def test_finite_difference_hvp_of_a_quadratic_is_exact():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((12, 12))
    a = m + m.T
    b = rng.standard_normal(12)
    theta, v = rng.standard_normal(12), rng.standard_normal(12)
    hv = hessian_vector_product(lambda t: a @ t + b, theta, v)  # the gradient of 1/2 t'At + b't
    np.testing.assert_allclose(hv, a @ v, rtol=1e-8, atol=1e-8)


def test_finite_difference_hvp_of_an_mlp_matches_torch_double_backward():
    data = load_dataset("blobs", seed=0, n_train=40)
    spec = MLPSpec(data.in_features, data.out_features, depth=2, width=7, activation="tanh",
                   loss="cross_entropy")
    params = init_params(spec, seed=3)
    theta, loss_and_grad = gradient_function(spec, params, data.x_train, data.y_train)
    v = np.random.default_rng(1).standard_normal(theta.size)
    ours = hessian_vector_product(lambda t: loss_and_grad(t)[1], theta, v)

    model = build_torch_mlp(spec, params, dtype="float64")
    weights = list(model.parameters())
    output = model(torch.as_tensor(data.x_train))
    loss = build_torch_loss("cross_entropy")(output, torch.as_tensor(data.y_train))
    grads = torch.autograd.grad(loss, weights, create_graph=True)
    keys = spec.param_keys()
    v_parts = unflatten(v, params, keys)
    dot = sum((g * torch.as_tensor(v_parts[k])).sum() for g, k in zip(grads, keys, strict=True))
    exact = np.concatenate([h.detach().numpy().ravel() for h in torch.autograd.grad(dot, weights)])
    assert np.linalg.norm(ours - exact) / np.linalg.norm(exact) < 1e-6


def test_power_iteration_finds_the_top_eigenvalue_of_a_known_matrix():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    eigenvalues = np.concatenate([[5.0, 3.0], rng.uniform(-2, 2, 28)])
    a = q @ np.diag(eigenvalues) @ q.T
    value, vector, used = power_iteration(lambda x: a @ x, 30, iters=500, tol=1e-12)
    assert value == pytest.approx(5.0, rel=1e-8)
    assert abs(vector @ q[:, 0]) == pytest.approx(1.0, abs=1e-4)
    assert used < 500


def test_top_hessian_eigenvalue_of_least_squares_is_exact():
    """Depth 0 + MSE: L = mean (Xw + b - y)^2, Hessian 2/N [X 1]'[X 1], known in closed form."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 4)), rng.standard_normal((50, 1))
    spec = MLPSpec(4, 1, depth=0, loss="mse")
    params = init_params(spec, seed=0)
    value, _ = top_hessian_eigenvalue(spec, params, x, y, iters=500, tol=1e-12)
    design = np.hstack([x, np.ones((50, 1))])
    assert value == pytest.approx(np.linalg.eigvalsh(2 / 50 * design.T @ design)[-1], rel=1e-6)


# ---------------------------------------------------------------- Jacobians and spectra
def test_end_to_end_jacobian_of_a_deep_linear_net_is_the_product_of_its_weights():
    spec = MLPSpec(6, 4, depth=4, width=9, activation="identity", init="xavier_normal", loss="mse")
    params = init_params(spec, seed=0)
    product = np.eye(6)
    for layer in range(1, spec.num_layers + 1):
        product = params[f"W{layer}"] @ product
    jac = end_to_end_jacobian(network(spec, params), np.random.default_rng(0).standard_normal(6))
    np.testing.assert_allclose(jac, product, rtol=1e-12, atol=1e-14)


def test_end_to_end_jacobian_of_a_tanh_net_matches_finite_differences():
    spec = MLPSpec(5, 3, depth=2, width=8, activation="tanh", loss="mse")
    net = network(spec, init_params(spec, seed=1))
    x0 = np.random.default_rng(2).standard_normal(5)
    jac = end_to_end_jacobian(net, x0)
    eps = 1e-6
    fd = np.stack([(np.asarray(net.forward(x0 + eps * e)) - np.asarray(net.forward(x0 - eps * e))) / (2 * eps)
                   for e in np.eye(5)], axis=1)
    np.testing.assert_allclose(jac, fd, rtol=1e-6, atol=1e-9)


def test_orthogonal_init_gives_singular_values_one():
    orthogonal = load_preset("orthogonal")
    for layers in (1, 5, 20):
        sv = orthogonal.jacobian_singular_values("orthogonal", layers, seed=layers, width=16)
        np.testing.assert_allclose(sv, 1.0, atol=1e-12)
    gaussian = orthogonal.jacobian_singular_values("lecun_normal", 20, seed=0, width=16)
    assert gaussian.max() / gaussian.min() > 1e3  # the spread the preset measures


def test_lyapunov_exponents_match_a_monte_carlo_product():
    orthogonal = load_preset("orthogonal")
    mu = orthogonal.lyapunov_exponents(1)  # n = 1: E ln|z| = -(gamma + ln 2) / 2
    assert mu[0] == pytest.approx(-(np.euler_gamma + np.log(2)) / 2, rel=1e-12)
    # n = 4: ln sigma_i of a long product / L approaches mu_i (QR iteration keeps it stable)
    rng, n, steps = np.random.default_rng(0), 4, 4000
    q, logs = np.eye(n), np.zeros(n)
    for _ in range(steps):
        q, r = np.linalg.qr(rng.normal(0, n ** -0.5, (n, n)) @ q)
        logs += np.log(np.abs(np.diag(r)))
    np.testing.assert_allclose(np.sort(logs / steps)[::-1], orthogonal.lyapunov_exponents(n), atol=0.03)


# ---------------------------------------------------------------- the line and the input
def test_loss_along_line_ends_at_the_two_losses_and_largest_rise():
    data = load_dataset("blobs", seed=0, n_train=30)
    spec = MLPSpec(data.in_features, data.out_features, depth=1, width=5, loss="cross_entropy")
    start, end = init_params(spec, 0), init_params(spec, 1)
    losses = loss_along_line(spec, start, end, [0.0, 0.5, 1.0], data.x_train, data.y_train)
    for a, params in ((0, start), (2, end)):
        expected = float(network(spec, params).loss(data.x_train, data.y_train))
        assert losses[a] == pytest.approx(expected, rel=1e-12)
    assert largest_rise([3.0, 2.0, 1.0]) == 0.0
    assert largest_rise([3.0, 1.0, 1.5, 0.5]) == pytest.approx(0.5)


def test_flatten_unflatten_round_trip():
    spec = MLPSpec(3, 2, depth=1, width=4)
    params = init_params(spec, 0)
    back = unflatten(flatten(params, spec.param_keys()), params, spec.param_keys())
    for key in params:
        np.testing.assert_array_equal(back[key], params[key])


def test_activation_maximisation_of_a_linear_unit_points_along_its_weights():
    spec = MLPSpec(6, 3, depth=0, loss="cross_entropy")
    params = init_params(spec, 0)
    net = network(spec, params)
    x, act = maximise_activation(net, [0, 1, 2], np.random.default_rng(0).standard_normal((3, 6)), radius=2.0,
                                 steps=200, lr=0.2)
    w = params["W1"]
    expected = 2.0 * w / np.linalg.norm(w, axis=1, keepdims=True)
    np.testing.assert_allclose(x, expected, atol=1e-6)
    np.testing.assert_allclose(act, 2.0 * np.linalg.norm(w, axis=1) + params["b1"], rtol=1e-9)


# ---------------------------------------------------------------- the presets at smoke size
def _check_claims(name: str, claims: list, figures: Path) -> None:
    module = load_preset(name)
    assert claims and all(isinstance(c, Claim) for c in claims)
    assert len(claims) == len(module.CLAIMS)
    for claim in claims:
        assert claim.preset == name
        for field in ("paper", "setup", "paper_says", "criterion", "measured"):
            assert getattr(claim, field), f"{name}: empty {field}"
        assert claim.passed in (True, False)
        assert claim.figure and (figures / claim.figure).is_file(), f"{name}: no figure {claim.figure}"


@pytest.mark.parametrize("name", COMPUTE_PRESETS)
def test_compute_preset_smoke(name, tmp_path):
    module = load_preset(name)
    result = module.compute(tmp_path / "out", smoke=True)
    _check_claims(name, module.analyse(result, tmp_path / "figures", smoke=True), tmp_path / "figures")


def test_sweep_presets_smoke(tmp_path):
    """Every sweep preset's SMOKE sweep through the app (all at once, one job at a time each), then
    its analyse."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    procs = {}
    for name in SWEEP_PRESETS:
        command = [sys.executable, "-m", "testbed", f"+experiment={name}", "logger=none",
                   "train.progress=false", f"hydra.sweep.dir={tmp_path / name}", *load_preset(name).SMOKE,
                   "-m"]
        procs[name] = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}:\n{output[-3000:]}"
    for name in SWEEP_PRESETS:
        runs = load_sweep(tmp_path / name)
        assert runs and all(r.status == "completed" for r in runs), name
        claims = load_preset(name).analyse(runs, tmp_path / "figures", smoke=True)
        _check_claims(name, claims, tmp_path / "figures")


def test_claims_are_registered_before_running():
    for name in SWEEP_PRESETS + COMPUTE_PRESETS:
        module = load_preset(name)
        assert module.NAME == name and isinstance(module.SMOKE, list)
        assert (REPO / "conf" / "experiment" / f"{name}.yaml").is_file()
        for claim in module.CLAIMS:
            assert claim.criterion and claim.passed is None and not claim.measured


# ---------------------------------------------------------------- rows added after the first report
def test_logistic_sum_squared_error_matches_torch_and_central_differences():
    """The PDP error measure (xor_encoder's squared-error row): E = 1/2 sum (y - sigmoid(z))^2, its
    dE/dz against torch autograd (with replica axes) and against central differences."""
    from testbed.engine import LOSSES, get_loss

    loss = get_loss("logistic_sum_squared_error")
    assert "logistic_sum_squared_error" not in LOSSES  # not a data set's task loss: the app never picks it
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(3, 5, 2))  # 3 replicas, 5 patterns, 2 outputs
    y = rng.integers(0, 2, size=z.shape).astype(float)
    value, cache = loss.forward(z, y)
    grad = loss.backward(cache)
    z_t = torch.tensor(z, requires_grad=True)
    reference = build_torch_loss("logistic_sum_squared_error")(z_t, torch.tensor(y))
    np.testing.assert_allclose(value, reference.detach().numpy(), rtol=1e-14)
    reference.sum().backward()
    np.testing.assert_allclose(grad, z_t.grad.numpy(), rtol=1e-13, atol=1e-16)
    eps, flat = 1e-6, z.ravel()
    numeric = np.empty_like(flat)
    for i in range(flat.size):
        step = np.zeros_like(flat)
        step[i] = eps
        numeric[i] = (loss.forward((flat + step).reshape(z.shape), y)[0].sum()
                      - loss.forward((flat - step).reshape(z.shape), y)[0].sum()) / (2 * eps)
    np.testing.assert_allclose(grad.ravel(), numeric, rtol=1e-6, atol=1e-9)
    # a sum over patterns, not a mean: twice the patterns, twice the loss
    doubled, _ = loss.forward(np.concatenate([z, z], axis=1), np.concatenate([y, y], axis=1))
    np.testing.assert_allclose(doubled, 2 * value, rtol=1e-14)


def test_xor_replicas_train_as_the_single_seeds_would():
    """Seeds stacked as replicas give each seed's own run (sweeps to solve and final loss)."""
    xor = load_preset("xor_encoder")
    stacked = xor.train_replicas("xor", [3, 5, 8], 300)
    for k, seed in enumerate([3, 5, 8]):
        alone = xor.train_replicas("xor", [seed], 300)
        assert alone["sweeps_to_solve"][0] == stacked["sweeps_to_solve"][k]
        np.testing.assert_allclose(alone["final_loss"][0], stacked["final_loss"][k], rtol=1e-10)
        np.testing.assert_allclose(alone["outputs"][0], stacked["outputs"][k], rtol=1e-10)


def test_xor_solved_is_every_output_on_the_right_side():
    """With no steps nothing moves: solved at step 0 exactly when the initial outputs already are."""
    xor = load_preset("xor_encoder")
    result = xor.train_replicas("xor", list(range(6)), 0)
    targets = np.array([0.0, 1.0, 1.0, 0.0])
    right = ((result["outputs"] > 0.5) == (targets > 0.5)).all(axis=1)
    assert np.array_equal(np.isfinite(result["sweeps_to_solve"]), right)
    np.testing.assert_allclose(result["final_loss"], 0.5 * ((result["outputs"] - targets) ** 2).sum(1))


def test_monte_carlo_spread_of_one_gaussian_matrix_is_the_quarter_circle_law():
    """L = 1: the singular values of an n x n N(0, 1/n) matrix follow the quarter-circle law
    sqrt(4 - s^2) / pi on [0, 2]; the Monte Carlo's median IQR of ln sigma agrees with its IQR."""
    orthogonal = load_preset("orthogonal")
    s = np.linspace(0, 2, 200001)[1:]
    cdf = np.cumsum(np.sqrt(4 - s**2) / np.pi) * (s[1] - s[0])
    q25, q75 = np.interp([0.25, 0.75], cdf, s)
    mc = orthogonal.monte_carlo_iqr((1, 3), width=128, draws=40)
    assert np.median(mc[1]) == pytest.approx(np.log(q75 / q25), rel=0.05)
    assert np.median(mc[3]) > np.median(mc[1])  # the spread grows with depth
