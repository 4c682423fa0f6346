"""The gradient presets (vanishing, exploding, he_vs_xavier, sgd_vs_adam, lr_failure, mean_field).

- each preset's config composes as a sweep, with no launcher of its own (hydra#2946);
- each preset's CLAIMS are pre-registered: every criterion is written, no verdict or measurement is;
- each preset runs end to end at SMOKE size through ``run_preset`` (or its ``compute``) and ``analyse``:
  one Claim per pre-registered claim with its fields filled, every figure written;
- the numbers the presets' criteria were fixed from agree with ``testbed.theory``;
- the layer-Jacobian measurement (engine, after the fact) agrees with torch.func.jacrev and with
  central finite differences on tiny nets.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from testbed.engine import MLPSpec, init_params
from testbed.experiments import load_preset
from testbed.experiments.base import run_preset
from testbed.experiments.measure import fmt, geomean, layer_jacobian_singular_values, slope
from testbed.theory import chi1, fixed_point, predicted_grad_norm_ratios

MINE = ("vanishing", "exploding", "he_vs_xavier", "sgd_vs_adam", "lr_failure", "mean_field")
CONF = Path(__file__).resolve().parents[1] / "conf"


# ---------------------------------------------------------------- configs and pre-registration
@pytest.mark.parametrize("name", MINE)
def test_preset_config_composes_as_a_sweep(name):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from testbed.app.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    assert cfg.name == name
    params = cfg.hydra.sweeper.params
    assert params and any("seed" in key for key in params), "a preset sweeps seeds"
    assert len(str(params.get("seed", "0,1,2")).split(",")) >= 3, "3 or more seeds"
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert "launcher" not in text.replace("hydra/launcher=", ""), "a launcher set here has no effect"


@pytest.mark.parametrize("name", MINE)
def test_claims_are_pre_registered(name):
    module = load_preset(name)
    assert module.NAME == name and module.SMOKE
    assert module.CLAIMS
    for claim in module.CLAIMS:
        assert claim.preset == name
        for field in ("paper", "setup", "paper_says", "criterion"):
            assert getattr(claim, field).strip(), f"{name}: empty {field}"
        assert claim.passed is None and not claim.measured and claim.figure is None


# ---------------------------------------------------------------- smoke runs, end to end
def _smoke(name: str, tmp_path: Path):
    module = load_preset(name)
    before = [asdict(c) for c in module.CLAIMS]
    sweep = tmp_path / "sweeps" / name
    if hasattr(module, "compute"):
        data = module.compute(sweep, smoke=True)
    else:
        data = run_preset(name, sweep, list(module.SMOKE), n_jobs=1)
    figures = tmp_path / "figures"
    claims = module.analyse(data, figures, smoke=True)
    assert [asdict(c) for c in module.CLAIMS] == before, "analyse must not change the pre-registered CLAIMS"
    return module, claims, figures


@pytest.mark.parametrize("name", MINE)
def test_preset_runs_end_to_end_at_smoke_size(name, tmp_path):
    module, claims, figures = _smoke(name, tmp_path)
    assert len(claims) == len(module.CLAIMS)
    for claim, registered in zip(claims, module.CLAIMS, strict=True):
        assert claim.criterion == registered.criterion, "the criterion is the pre-registered one"
        assert claim.paper and claim.setup and claim.paper_says
        assert claim.measured.strip(), f"{claim.paper}: nothing measured"
        assert claim.passed in (True, False), "at smoke size a verdict is still written (meaningless)"
        assert claim.figure, f"{claim.paper}: no figure"
        assert (figures / claim.figure).is_file()
        assert (figures / claim.figure).stat().st_size > 5000, "an empty figure"


# ---------------------------------------------------------------- the theory the criteria were fixed from
MEAN_X2 = 0.9375  # mean(x^2) of the standardised digits (4 constant pixels are 0)


def _first_top(q1, depth, sw2, activation):
    return float(np.prod(predicted_grad_norm_ratios(q1, depth, sw2, 0.0, activation)))


def test_vanishing_thresholds_follow_from_the_theory():
    m = load_preset("vanishing")
    standard = _first_top(MEAN_X2 / 3, 5, 1 / 3, "tanh") ** 0.25
    xavier = _first_top(0.4 * MEAN_X2, 5, 1.0, "tanh") ** 0.25
    assert standard == pytest.approx(0.54, abs=0.01) and standard <= math.sqrt(1 / 3)
    assert xavier == pytest.approx(0.86, abs=0.02)
    assert standard < m.TANH_STANDARD_MAX_PER_LINK < m.TANH_XAVIER_MIN_PER_LINK < xavier
    sigmoid_xavier = _first_top(0.4 * MEAN_X2, 5, 1.0, "sigmoid")
    assert sigmoid_xavier <= 0.25**4 < m.SIGMOID_XAVIER_MAX_RATIO
    # a Gaussian n x n matrix with entry variance s^2/n: mean singular value (8 / 3 pi) s
    assert m.JACOBIAN_STANDARD[0] < 8 / (3 * math.pi) * math.sqrt(1 / 3) < m.JACOBIAN_STANDARD[1]
    assert m.JACOBIAN_XAVIER[0] < 8 / (3 * math.pi) < m.JACOBIAN_XAVIER[1]


def test_exploding_and_he_predictions():
    assert _first_top(4 * MEAN_X2, 20, 4.0, "relu") == pytest.approx(2 ** 9.5, rel=1e-6)
    assert _first_top(4 * MEAN_X2, 10, 4.0, "tanh") == pytest.approx(3.36, abs=0.02)
    assert float(chi1(fixed_point(4.0, 0.0, "tanh"), 4.0, "tanh")) > 1
    assert _first_top(2 * MEAN_X2, 30, 2.0, "relu") == pytest.approx(1.0, abs=1e-9)
    assert _first_top(MEAN_X2, 30, 1.0, "relu") == pytest.approx(2 ** -14.5, rel=1e-6)


def test_mean_field_transient_claim_values():
    """claims.md: tanh, sw2 = 1.5 from q^1 = 1 at depth 20: ratio ~0.80 while chi_1* = 1.04."""
    q_star = fixed_point(1.5, 0.0, "tanh")
    assert float(chi1(q_star, 1.5, "tanh")) == pytest.approx(1.0406, abs=1e-3)
    assert _first_top(1.0, 20, 1.5, "tanh") ** 2 == pytest.approx(0.796, abs=2e-3)


# ---------------------------------------------------------------- the Jacobian measurement
def _torch_layer_jacobians(spec: MLPSpec, params: dict, x: np.ndarray) -> list[np.ndarray]:
    """J^l = d a^{l+1} / d a^l per example, by torch.func.jacrev through an independent torch forward."""
    phi = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid,
           "softsign": torch.nn.functional.softsign}[spec.activation]
    weights = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in params.items()}
    activations = [phi(torch.as_tensor(x, dtype=torch.float64) @ weights["W1"].T + weights["b1"])]
    for layer in range(2, spec.depth + 1):
        activations.append(phi(activations[-1] @ weights[f"W{layer}"].T + weights[f"b{layer}"]))
    out = []
    for layer in range(1, spec.depth):
        w, b = weights[f"W{layer + 1}"], weights[f"b{layer + 1}"]
        layer_map = lambda a, w=w, b=b: phi(w @ a + b)  # noqa: E731 a^l -> a^{l+1}
        per_example = [torch.func.jacrev(layer_map)(a) for a in activations[layer - 1]]
        out.append(torch.stack(per_example).numpy())
    return out


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "softsign"])
def test_layer_jacobian_singular_values_match_torch_jacrev(activation):
    spec = MLPSpec(in_features=5, out_features=3, depth=3, width=7, activation=activation,
                   init="xavier_normal", init_scale=1.7, bias_init="normal", bias_std=0.3)
    params = init_params(spec, seed=3)
    x = np.random.default_rng(0).normal(size=(4, 5))
    ours = layer_jacobian_singular_values(spec, params, x)
    theirs = [np.linalg.svd(j, compute_uv=False) for j in _torch_layer_jacobians(spec, params, x)]
    assert len(ours) == spec.depth - 1
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == (4, 7)
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_layer_jacobian_matches_central_differences():
    """J^1 of a tanh net by central differences of a^2 in a^1 (engine alone, float64)."""
    from testbed.engine import MLP, Backend

    spec = MLPSpec(in_features=4, out_features=2, depth=2, width=6, activation="tanh", init="xavier_uniform")
    params = init_params(spec, seed=1)
    x = np.random.default_rng(2).normal(size=(1, 4))
    net = MLP(spec, {k: Backend("numpy").asarray(v) for k, v in params.items()})
    net.forward(x)
    a1 = np.asarray(net.activations[0])[0]

    def a2(a):
        return np.tanh(params["W2"] @ a + params["b2"])

    eps = 1e-6
    jac = np.stack([(a2(a1 + eps * e) - a2(a1 - eps * e)) / (2 * eps) for e in np.eye(6)], axis=1)
    ours = layer_jacobian_singular_values(spec, params, x)[0][0]
    np.testing.assert_allclose(ours, np.linalg.svd(jac, compute_uv=False), rtol=1e-7, atol=1e-9)


def test_small_helpers():
    assert geomean([1, 4, 16]) == pytest.approx(4.0)
    assert math.isnan(geomean([1.0, -1.0]))
    assert slope(np.array([3.0, 5.0, 7.0])) == pytest.approx(2.0)
    assert fmt(1.23456e-5) == "1.23e-05" and fmt(0.5) == "0.5"
