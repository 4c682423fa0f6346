"""Training trajectories: the engine and torch.optim in lockstep for 100 steps.

``testbed.reference.Lockstep`` starts both from identical weights and feeds both identical
minibatches (16 points drawn from a fixed synthetic set of 256 points, 10 features, 3 outputs:
a noisy teacher's classes, regression targets or multi-labels; ``helpers.synthetic_dataset``).
After every step the parameters are compared: relative error <= 1e-9 in float64 (both engine
backends), <= 1e-4 in float32 (torch backend). Every optimiser: sgd plain, with momentum and
dampening, nesterov; adam, adam with L2, adamw; rmsprop plain, centered, with momentum; adagrad
with lr decay; weight decay, gradient clipping (``clip_norm``, checked to be active), high but
stable learning rates, and every optimiser with its default hyperparameters (apart from lr,
which Lockstep passes on, each side falls back to its own: these catch a default that
differs). Every run must also train: the loss on the whole data set goes down, and stays finite.

Why no chaotic settings. Lockstep equality rests on the two implementations differing by
rounding only (~1e-16 per step in float64). Whether that stays small is a property of the
training dynamics, not of the code:
- at the edge of stability or beyond (e.g. sgd lr = 0.5 with nesterov momentum 0.9 on a tiny
  problem) the map from parameters to parameters has a Lyapunov exponent > 0 and any
  perturbation, rounding included, grows exponentially: two *identical* implementations that
  sum in a different order part ways after a few dozen steps;
- a normalised optimiser (rmsprop, adam) that has converged to a near-zero gradient divides
  rounding noise by sqrt(v) ~ |noise|, turning it into steps of size lr in random directions
  (in float32 long before float64).
Neither says anything about the engine's correctness, and no tolerance would make them a test:
so the data are like real training (informative minibatch gradients from a set the network
cannot fit in 100 steps), and "high learning rate" means high but stable (sgd lr 0.5 without
momentum on a tanh net, adam lr 0.05), checked to train.
"""

from __future__ import annotations

import math

import pytest
from helpers import (
    TRAJECTORIES,
    TRAJECTORY_TOL,
    Backend,
    backend_params,
    run_trajectory,
)

from testbed.engine import OPTIMIZERS, get_optimizer

STEPS = 100
TRAJECTORY_BACKENDS = (backend_params(dtypes=("float64",))
                       + backend_params(names=("torch",), dtypes=("float32",)))


@pytest.mark.parametrize("backend", TRAJECTORY_BACKENDS)
@pytest.mark.parametrize("case", TRAJECTORIES, ids=[case.name for case in TRAJECTORIES])
def test_trajectory_matches_torch_optim(case, backend: Backend):
    result = run_trajectory(case, backend, steps=STEPS)
    tol = TRAJECTORY_TOL[backend.dtype]
    assert result.param_rel_err <= tol, f"parameters drift apart: {result.param_rel_err:.3g} > {tol:g}"
    assert all(math.isfinite(loss) for loss in result.losses) and math.isfinite(result.final_loss)
    assert result.final_loss < result.initial_loss, (
        f"does not train: {result.initial_loss:.4f} -> {result.final_loss:.4f}")
    if case.clip_norm is not None:
        assert result.clipped_steps > STEPS // 2, f"clipping active in {result.clipped_steps} steps only"


PLAIN_SGD = [case for case in TRAJECTORIES
             if get_optimizer(case.optimizer, **case.hyper).fused_lr() is not None and case.clip_norm is None]


@pytest.mark.parametrize("backend", TRAJECTORY_BACKENDS)
@pytest.mark.parametrize("case", PLAIN_SGD, ids=[case.name for case in PLAIN_SGD])
def test_fused_sgd_step_matches_torch_optim(case, backend: Backend):
    """``MLP.sgd_step`` (plain SGD's update fused into backward: the app's steps that log nothing)
    against torch.optim.SGD's separate backward and update, over the same steps, to the same
    tolerance."""
    result = run_trajectory(case, backend, steps=STEPS, fused=True)
    tol = TRAJECTORY_TOL[backend.dtype]
    assert result.param_rel_err <= tol, f"parameters drift apart: {result.param_rel_err:.3g} > {tol:g}"
    assert result.final_loss < result.initial_loss


def test_every_optimizer_and_variant_is_covered():
    cases = {case.name: case for case in TRAJECTORIES}
    assert {case.optimizer for case in TRAJECTORIES} == set(OPTIMIZERS)
    hyper = [case.hyper for case in TRAJECTORIES]
    for variant in ("momentum", "dampening", "nesterov", "centered", "weight_decay", "lr_decay"):
        assert any(variant in h for h in hyper), variant
    assert any(case.optimizer == "rmsprop" and "momentum" in case.hyper for case in TRAJECTORIES)
    assert any(case.clip_norm is not None for case in TRAJECTORIES)
    assert {"sgd_high_lr", "adam_high_lr"} <= set(cases)
    assert {f"{name}_defaults" for name in OPTIMIZERS} <= set(cases)
    assert {"sgd", "sgd_defaults", "sgd_high_lr"} <= {case.name for case in PLAIN_SGD}
