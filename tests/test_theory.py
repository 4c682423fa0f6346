"""The mean-field and FLOP-count theory against closed forms, claims.md's worked values and a wide random net.

Expected values come from the papers (via docs/claims.md) or from closed
forms, never from runs of this code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from testbed.theory import (
    ACTIVATIONS,
    backward_forward_flop_ratio,
    chi1,
    chi_c,
    correlation_map,
    depth_scale,
    fixed_point,
    gauss_hermite,
    gaussian_expectation,
    length_map,
    mlp_flops,
    phi_and_derivative,
    predicted_grad_norm_ratios,
    predicted_grad_variance_ratio,
    predicted_log_grad_norm_profile,
    predicted_log_grad_norm_slope,
    q_trajectory,
    regime,
)

# ---------------------------------------------------------------- quadrature


def test_gauss_hermite_moments_of_standard_normal():
    nodes, weights = gauss_hermite()
    assert weights.sum() == pytest.approx(1.0, abs=1e-14)
    assert weights @ nodes == pytest.approx(0.0, abs=1e-10)
    assert weights @ nodes**2 == pytest.approx(1.0, abs=1e-10)
    assert weights @ nodes**4 == pytest.approx(3.0, abs=1e-10)
    assert gaussian_expectation(lambda s: np.maximum(s, 0) ** 2) == pytest.approx(0.5, abs=1e-10)
    assert gaussian_expectation(lambda s: s**2, q=[0.5, 4.0]) == pytest.approx([0.5, 4.0], abs=1e-10)


def test_gauss_hermite_refuses_overflowing_rules():
    with pytest.raises(ValueError, match="overflows"):
        gauss_hermite(400)


def test_even_rule_integrates_a_step_at_zero_exactly():
    # why the default rule is even: relu'(z)^2 is a step at 0, E = 1/2; an odd rule has a node on it
    assert gaussian_expectation(lambda s: (s > 0).astype(float)) == pytest.approx(0.5, abs=1e-14)
    assert len(gauss_hermite()[0]) % 2 == 0


# ---------------------------------------------------------------- activations


def test_activation_names_cover_the_engine_and_match_its_formulas():
    from testbed.engine.activations import ACTIVATIONS as ENGINE_ACTIVATIONS
    from testbed.engine.activations import get_activation

    s = np.array([-30.0, -3.0, -1.0, -0.3, 0.0, 0.3, 1.0, 3.0, 25.0])
    for name in [*ENGINE_ACTIVATIONS, "gelu_tanh"]:
        assert name in ACTIVATIONS
        phi, dphi = phi_and_derivative(name)
        engine = get_activation(name)
        a, cache = engine.forward(s)
        np.testing.assert_allclose(phi(s), a, rtol=1e-12, atol=1e-15, err_msg=name)
        np.testing.assert_allclose(dphi(s), engine.backward(np.ones_like(s), cache), rtol=1e-12,
                                   atol=1e-15, err_msg=name)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivative_matches_central_differences_away_from_kinks(name):
    phi, dphi = phi_and_derivative(name)
    s = np.array([-4.0, -1.3, -0.2, 0.15, 0.9, 2.7])  # no kink (0) and no softplus threshold (20)
    h = 1e-6
    np.testing.assert_allclose(dphi(s), (phi(s + h) - phi(s - h)) / (2 * h), rtol=1e-6, atol=1e-9)


def test_kink_conventions_follow_torch():
    zero = np.array([0.0])
    assert phi_and_derivative("relu")[1](zero)[0] == 0.0
    assert phi_and_derivative("leaky_relu")[1](zero)[0] == 0.01
    assert phi_and_derivative("elu")[1](zero)[0] == 1.0


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="unknown activation"):
        phi_and_derivative("swish-9")


# ---------------------------------------------------------------- worked values, claims.md


@pytest.mark.parametrize(("sw2", "q_star", "chi_star"), [(1.5, 0.2869, 1.0406), (2.0, 0.6180, 1.1055)])
def test_tanh_worked_values(sw2, q_star, chi_star):
    q = fixed_point(sw2, 0.0, "tanh")
    assert abs(q - q_star) <= 0.5e-4  # the 4 decimals claims.md gives
    assert abs(chi1(q, sw2, "tanh") - chi_star) <= 0.5e-4
    assert length_map(q, sw2, 0.0, "tanh") == pytest.approx(q, abs=1e-12)
    assert regime(chi1(q, sw2, "tanh")) == "chaotic"


def test_tanh_at_sw2_one_fixed_point_zero_power_law_decay():
    assert fixed_point(1.0, 0.0, "tanh") == 0.0
    assert chi1(0.0, 1.0, "tanh") == pytest.approx(1.0, abs=1e-14)
    assert regime(chi1(0.0, 1.0, "tanh")) == "critical"
    # tanh(x)^2 = x^2 - 2/3 x^4 + ..., so q -> q - 2 q^2: q^l ~ 1/(2l), a power law, not exp(-l/xi)
    depth = 4000
    q = q_trajectory(1.0, depth, 1.0, 0.0, "tanh")
    assert np.all(np.diff(q) < 0)
    assert 2 * depth * q[-1] == pytest.approx(1.0, rel=0.05)  # next order is O(log(l)/l)
    assert chi1(q[-1], 1.0, "tanh") == pytest.approx(1.0, abs=1e-3)


def test_fixed_point_reports_divergence_and_non_convergence():
    with pytest.raises(OverflowError):
        fixed_point(2.5, 0.0, "relu")  # q grows as 1.25^l
    with pytest.raises(RuntimeError):
        fixed_point(1.0, 0.1, "linear", max_iter=200)  # q grows by sb2 each layer


# ---------------------------------------------------------------- relu, linear, erf: closed forms


@pytest.mark.parametrize("sw2", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("q", [1e-4, 0.3, 1.0, 7.0, 250.0])
def test_relu_chi1_is_half_sw2_for_every_q(sw2, q):
    assert chi1(q, sw2, "relu") == pytest.approx(sw2 / 2, rel=1e-12)
    # He et al.: Var[y_l] = 1/2 n_l Var[w_l] Var[y_{l-1}]
    assert length_map(q, sw2, 0.1, "relu") == pytest.approx(sw2 * q / 2 + 0.1, rel=1e-12)


def test_he_init_is_critical_for_relu():
    assert regime(chi1(1.0, 2.0, "relu")) == "critical"
    assert depth_scale(1.0) == math.inf
    assert regime(chi1(1.0, 1.0, "relu")) == "ordered"  # Xavier-like sw2 = 1: chi = 1/2 per layer
    assert depth_scale(chi1(1.0, 1.0, "relu")) == pytest.approx(1 / math.log(2), rel=1e-12)


@pytest.mark.parametrize("sw2", [0.5, 1.0, 1.7])
def test_linear_activation_chi1_is_sw2_and_q_map_is_affine(sw2):
    for q in (0.01, 1.0, 9.0):
        assert chi1(q, sw2, "identity") == pytest.approx(sw2, rel=1e-13)
        assert length_map(q, sw2, 0.2, "linear") == pytest.approx(sw2 * q + 0.2, rel=1e-13)
    trajectory = q_trajectory(2.0, 6, sw2, 0.0, "linear")
    np.testing.assert_allclose(trajectory, 2.0 * sw2 ** np.arange(6), rtol=1e-12)


def test_erf_maps_match_the_arcsine_kernel():
    # Williams 1997: E[erf(u1) erf(u2)] = 2/pi arcsin(2 S12 / sqrt((1 + 2 S11)(1 + 2 S22)))
    sw2, sb2 = 1.3, 0.05
    for q in (0.1, 1.0, 2.0):  # moderate q, rel 1e-8: the rule's error grows with q (docstring)
        expected_q = sw2 * 2 / math.pi * math.asin(2 * q / (1 + 2 * q)) + sb2
        assert length_map(q, sw2, sb2, "erf") == pytest.approx(expected_q, rel=1e-8)
        # E[(2/sqrt(pi) exp(-q z^2))^2] = 4/pi / sqrt(1 + 4q)
        assert chi1(q, sw2, "erf") == pytest.approx(sw2 * 4 / math.pi / math.sqrt(1 + 4 * q), rel=1e-8)
        for c in (-0.6, 0.0, 0.4, 0.9):
            expected_c = (sw2 * 2 / math.pi * math.asin(2 * q * c / (1 + 2 * q)) + sb2) / expected_q
            assert correlation_map(c, q, sw2, sb2, "erf") == pytest.approx(expected_c, rel=1e-8, abs=1e-12)


# ---------------------------------------------------------------- correlation map


def test_correlation_map_fixes_one_and_its_slope_is_chi_c():
    sw2, sb2 = 1.5, 0.05
    q = fixed_point(sw2, sb2, "tanh")
    assert correlation_map(1.0, q, sw2, sb2, "tanh") == pytest.approx(1.0, abs=1e-10)
    assert chi_c(1.0, q, sw2, "tanh") == pytest.approx(chi1(q, sw2, "tanh"), rel=1e-10)
    c, h = 0.5, 1e-5
    c_up, c_down = (correlation_map(c + d, q, sw2, sb2, "tanh") for d in (h, -h))
    slope = (c_up - c_down) / (2 * h)
    assert chi_c(c, q, sw2, "tanh") == pytest.approx(slope, rel=1e-6)  # Price's theorem at q = q*


# ---------------------------------------------------------------- finite-depth predictions


def test_tanh_depth_20_ratio_is_about_0_80_although_chi_star_exceeds_one():
    # claims.md: "tanh sw2=1.5 from q^1=1 gives a depth-20 ratio ~0.80 although chi_1* = 1.04".
    # Read as the squared-norm (variance) ratio ||dL/ds^1||^2 / ||dL/ds^20||^2 of a 20-layer net,
    # i.e. the 19 factors chi_1(q^1) ... chi_1(q^19); "~" taken as 2%.
    ratio = predicted_grad_variance_ratio(1.0, 20, 1.5, 0.0, "tanh")
    assert ratio == pytest.approx(0.80, rel=0.02)
    assert chi1(fixed_point(1.5, 0.0, "tanh"), 1.5, "tanh") > 1  # yet exploding asymptotically
    q = q_trajectory(1.0, 20, 1.5, 0.0, "tanh")
    assert chi1(q[0], 1.5, "tanh") < 1  # the transient: q^1 = 1 > q* = 0.287 makes early layers ordered


def test_ratios_profile_and_slope_agree_with_each_other():
    q1, depth, sw2, sb2 = 1.0, 60, 1.5, 0.0
    ratios = predicted_grad_norm_ratios(q1, depth, sw2, sb2, "tanh")
    q = q_trajectory(q1, depth, sw2, sb2, "tanh")
    assert ratios.shape == (depth - 1,)
    np.testing.assert_allclose(ratios**2, chi1(q[:-1], sw2, "tanh"), rtol=1e-13)  # link l uses q^l
    profile = predicted_log_grad_norm_profile(q1, depth, sw2, sb2, "tanh")
    assert profile.shape == (depth,) and profile[-1] == 0.0
    variance_ratio = predicted_grad_variance_ratio(q1, depth, sw2, sb2, "tanh")
    assert profile[0] == pytest.approx(0.5 * math.log(variance_ratio))
    # far from the input q^l = q*, so ln||dL/ds^l|| is a line in l with slope -1/2 ln chi_1(q*)
    slope = predicted_log_grad_norm_slope(sw2, sb2, "tanh")
    assert slope == pytest.approx(-0.5 * math.log(1.0406), abs=1e-4)
    np.testing.assert_allclose(np.diff(profile[-10:]), slope, rtol=1e-6)


def test_depth_scale_and_regime():
    assert depth_scale(math.exp(-1 / 5)) == pytest.approx(5.0, rel=1e-12)
    assert depth_scale(math.exp(1 / 5)) == pytest.approx(-5.0, rel=1e-12)  # chaotic: growth e-folding 5
    assert [regime(c) for c in (0.9, 1.0, 1.1)] == ["ordered", "critical", "chaotic"]
    with pytest.raises(ValueError):
        depth_scale(0.0)


def test_monte_carlo_wide_tanh_net_follows_chi1_layer_by_layer():
    """Backpropagate a random dL/ds^L through a wide random tanh net by hand and compare per layer.

    Given delta^{l+1}, ||delta^l||^2 = sum over B N units of phi'(s)^2 u^2 times sw2/N ||delta^{l+1}||^2
    with u ~ N(0, 1): a mean of n = B N independent terms whose relative variance is
    E[phi'^4 u^4] / E[phi'^2 u^2]^2 - 1 = 3 kappa - 1, kappa = E[phi'^4] / E[phi'^2]^2. So the
    measured ratio has relative standard error sqrt((3 kappa - 1) / (B N)) (~ sqrt(2/width) per
    sample, averaged over B samples); we allow 4 of them per layer, about 4% here. Finite-width
    bias (reuse of W^{l+1} from the forward pass, fluctuating q) is O(1/N), far below that.
    """
    rng = np.random.default_rng(20160101)
    width, depth, batch, sw2, q1 = 1000, 10, 32, 1.5, 1.0
    x = rng.standard_normal((batch, width))
    x *= np.sqrt(q1 / sw2 / np.mean(x**2, axis=1, keepdims=True))  # q^1 = sw2 mean(x^2) = 1 per sample
    weights = [rng.standard_normal((width, width)) * np.sqrt(sw2 / width) for _ in range(depth)]

    pre_activations = []
    a = x
    for w in weights:  # s^l = W^l phi(s^{l-1}), sb2 = 0; rows are samples
        s = a @ w.T
        pre_activations.append(s)
        a = np.tanh(s)

    grad = rng.standard_normal((batch, width))  # dL/ds^depth, independent of the net
    squared_norms = [np.sum(grad**2)]
    for layer in range(depth - 1, 0, -1):  # delta^l = phi'(s^l) * (W^{l+1}^T delta^{l+1})
        grad = (1 - np.tanh(pre_activations[layer - 1]) ** 2) * (grad @ weights[layer])
        squared_norms.append(np.sum(grad**2))
    squared_norms = np.array(squared_norms[::-1])  # index l - 1 holds ||dL/ds^l||^2
    measured = squared_norms[:-1] / squared_norms[1:]

    q = q_trajectory(q1, depth, sw2, 0.0, "tanh")[:-1]
    predicted = chi1(q, sw2, "tanh")
    _, dphi = phi_and_derivative("tanh")
    kappa = (gaussian_expectation(lambda s: dphi(s) ** 4, q)
             / gaussian_expectation(lambda s: dphi(s) ** 2, q) ** 2)
    standard_error = np.sqrt((3 * kappa - 1) / (batch * width))
    assert np.all(np.abs(measured / predicted - 1) < 4 * standard_error), (measured, predicted)
    total_error = np.sqrt(np.sum(standard_error**2))
    assert squared_norms[0] / squared_norms[-1] == pytest.approx(np.prod(predicted), rel=4 * total_error)


# ---------------------------------------------------------------- cost of the backward pass


@pytest.mark.parametrize(("num_layers", "expected"), [(1, 1.0), (2, 1.5), (3, 5 / 3), (10, 1.9)])
def test_backward_forward_flop_ratio(num_layers, expected):
    assert backward_forward_flop_ratio(num_layers) == pytest.approx(expected, rel=1e-15)
    assert backward_forward_flop_ratio(num_layers) < 2  # cheap-gradient principle


def test_mlp_flops_equal_widths_give_the_ratio_and_count_the_dense_terms():
    for num_layers in (1, 2, 5, 30):
        forward, backward = mlp_flops(64, [256] * (num_layers + 1))
        assert forward == num_layers * 2 * 64 * 256 * 256
        assert backward / forward == pytest.approx(backward_forward_flop_ratio(num_layers), rel=1e-15)
    # 784 -> 100 -> 10, batch 32: forward 2B(784*100 + 100*10); backward dW for both layers + dX for layer 2
    forward, backward = mlp_flops(32, [784, 100, 10])
    assert forward == 2 * 32 * (784 * 100 + 100 * 10)
    assert backward == 2 * 32 * ((784 * 100 + 100 * 10) + 100 * 10)
    with pytest.raises(ValueError):
        mlp_flops(32, [784])
