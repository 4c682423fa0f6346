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
from dataclasses import asdict, replace
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


# ---------------------------------------------------------------- rows added after the first report
def _fake_run(config: dict, metrics: list[dict], summary: dict | None = None):
    from testbed.tracking.sweep import Run

    return Run(Path("/nonexistent"), config, {}, metrics, summary or {"status": "completed"})


def _nested(**dotted) -> dict:
    config: dict = {}
    for key, value in dotted.items():
        node = config
        *parents, leaf = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def test_he_vs_xavier_roles_split_the_budgets_and_the_lr_probe():
    m = load_preset("he_vs_xavier")

    def run(steps, optim, lr):
        return _fake_run(_nested(train__steps=steps, optim__name=optim, optim__lr=lr), [])

    assert m.role(run(600, "sgd", 0.01), 600) == "main"
    assert m.role(run(600, "adam", 0.001), 600) == "main"
    assert m.role(run(m.LONG_STEPS, "sgd", 0.01), 600) == "long"
    assert m.role(run(m.LONG_STEPS, "adam", 0.001), 600) == "long"
    assert m.role(run(600, "sgd", 0.003), 600) == "probe"
    assert m.role(run(4, "sgd", 0.01), 4) == "main"  # a smoke sweep: one budget, all main


def test_he_vs_xavier_stall_verdict_on_synthetic_runs():
    """Fig. 3's criterion: He ends >= 0.8 and Xavier <= 0.2 in >= 2/3 of the seeds."""
    m = load_preset("he_vs_xavier")

    def run(init, final):
        metrics = [{"step": 0, "test/acc": 0.1, "test/loss": 2.3}, {"step": 25, "test/acc": final,
                                                                      "test/loss": 1.0}]
        return _fake_run(_nested(model__init=init, model__depth=30, optim__name="sgd"), metrics,
                         {"status": "completed", "final/test_acc": final})

    def verdict(he, xa):
        cells = {("momentum", 30, "kaiming_normal"): [run("kaiming_normal", a) for a in he],
                 ("momentum", 30, "xavier_normal"): [run("xavier_normal", a) for a in xa]}
        claim = replace(m.CLAIMS[1])
        found = m._stall_claim(claim, cells, 30)
        assert found["he_rise"] == [0.0] * len(he)  # the test loss only fell
        return claim.passed

    assert verdict([0.9, 0.85, 0.3], [0.1, 0.1, 0.5]) is True
    assert verdict([0.9, 0.5, 0.3], [0.1, 0.1, 0.1]) is False   # He: 1 of 3
    assert verdict([0.9, 0.9, 0.9], [0.1, 0.3, 0.3]) is False   # Xavier: 1 of 3 stalled
    assert verdict([0.9, 0.9, 0.9], []) is False


def test_vanishing_saturation_verdict_on_synthetic_runs():
    """Fig. 2's criterion: the top layer's mean <= 0.1 at a logged step where every lower layer is >= 0.4,
    in >= 2 of 3 seeds (the pre-registered row and the longer-budget row share it)."""
    m = load_preset("vanishing")

    def run(top, lower):
        metrics = [{"step": 50 * i, "act/mean/L3": t, "act/mean/L1": 0.5, "act/mean/L2": lo}
                   for i, (t, lo) in enumerate(zip(top, lower, strict=True))]
        return _fake_run(_nested(model__depth=3), metrics, {"status": "completed", "final/test_acc": 0.5})

    saturating = run([0.5, 0.2, 0.05, 0.08], [0.5, 0.5, 0.45, 0.45])
    lower_too_low = run([0.5, 0.2, 0.05, 0.08], [0.5, 0.5, 0.3, 0.3])
    falling = run([0.5, 0.3, 0.2, 0.15], [0.5, 0.5, 0.5, 0.5])
    claim = replace(m.CLAIMS[7])
    found = m._saturation(claim, [saturating, saturating, falling], 3)
    assert claim.passed is True and found["hits"] == [True, True, False]
    assert found["still_falling"] == [False, False, True] and found["steps_at"] == [100, 100, 150]
    assert found["first_hit"] == [100, 100, None]
    found = m._saturation(claim, [saturating, lower_too_low, falling], 3)
    assert claim.passed is False and found["lower_mins"][1] == pytest.approx(0.3)
    assert "1 of 3 seeds meet the criterion" in claim.measured
    assert "10000 steps" in m._saturation_sentence(found, 10000) and m._saturation_sentence(found, None) == ""


@pytest.mark.parametrize("name, extra", [("vanishing", "LONG"), ("he_vs_xavier", "LONG")])
def test_added_rows_compose_and_keep_the_pre_registered_budget(name, extra):
    """The longer-budget runs are the preset's config with its budget raised; the yaml's own budget
    (what the pre-registered rows read) is unchanged, and the added rows say which budget they used."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from testbed.app.schema import register_configs

    m = load_preset(name)
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        base = compose("config", overrides=[f"+experiment={name}"])
        longer = compose("config", overrides=[f"+experiment={name}", *getattr(m, extra)])
    assert base.train.steps == m.STEPS
    assert longer.train.steps == m.LONG_STEPS > m.STEPS
    added = [c for c in m.CLAIMS if "longer budget" in c.paper]
    assert added and all(f"{m.LONG_STEPS} steps" in c.setup and "added after" in c.paper for c in added)
    for claim in added:  # the same criterion as the pre-registered row it repeats
        assert any(claim.criterion == c.criterion for c in m.CLAIMS if "longer budget" not in c.paper)
