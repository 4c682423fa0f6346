"""K replicas stacked on a leading axis train exactly as each configuration trained alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from testbed.engine import (
    MLP,
    Backend,
    MLPSpec,
    clip_grad_norm,
    get_optimizer,
    init_params,
    init_replica_params,
)
from testbed.engine.backend import to_numpy

SEEDS, INITS, SCALES = [0, 1, 2], ["xavier_uniform", "kaiming_normal", "orthogonal"], [1.0, 1.5, 0.7]
OPTIMIZERS = [("sgd", {"momentum": 0.9}, 0.1), ("adam", {}, 0.01), ("adamw", {}, 0.01),
              ("rmsprop", {"centered": True, "momentum": 0.5}, 0.003), ("adagrad", {}, 0.05)]


def test_replica_params_equal_the_single_runs_initial_params():
    spec = MLPSpec(5, 3, depth=2, width=7)
    stacked = init_replica_params(spec, SEEDS, INITS, SCALES)
    for k, (seed, init, scale) in enumerate(zip(SEEDS, INITS, SCALES, strict=True)):
        alone = init_params(replace(spec, init=init, init_scale=scale), seed)
        for key, value in alone.items():
            assert np.array_equal(stacked[key][k], value)


def test_replica_lists_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="replica lists differ"):
        init_replica_params(MLPSpec(5, 3), [0, 1], ["xavier_uniform"])


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name, hyper, base_lr", OPTIMIZERS)
def test_each_replica_equals_its_configuration_run_alone(backend, name, hyper, base_lr):
    rng = np.random.default_rng(0)
    x_all, y_all = rng.normal(size=(200, 6)), rng.integers(0, 4, 200)
    spec = MLPSpec(6, 4, depth=3, width=9, activation="tanh")
    be = Backend(backend, "float64")
    lrs = base_lr * np.array([0.5, 1.0, 2.0])  # one learning rate per replica
    initial = init_replica_params(spec, SEEDS, INITS, SCALES)
    stacked = MLP(spec, {k: be.asarray(v) for k, v in initial.items()})
    stacked_opt = get_optimizer(name, lr=be.asarray(lrs), **hyper)
    alone = []
    for seed, init, scale, lr in zip(SEEDS, INITS, SCALES, lrs, strict=True):
        s = replace(spec, init=init, init_scale=scale)
        alone.append((MLP(s, {k: be.asarray(v) for k, v in init_params(s, seed).items()}),
                      get_optimizer(name, lr=float(lr), **hyper)))
    for step in range(30):
        # each replica draws its own minibatch order, as a different seed would
        idx = np.stack([np.random.default_rng([k, step]).choice(200, 16, replace=False) for k in range(3)])
        _, grads = stacked.loss_and_grads(be.asarray(x_all[idx]), be.labels(y_all[idx]))
        clip_grad_norm(grads, 1.0, replica_ndim=1)
        stacked_opt.step(stacked.params, grads)
        for k, (net, opt) in enumerate(alone):
            _, g = net.loss_and_grads(be.asarray(x_all[idx[k]]), be.labels(y_all[idx[k]]))
            clip_grad_norm(g, 1.0)
            opt.step(net.params, g)
    for k, (net, _) in enumerate(alone):
        for key, value in net.params.items():
            ours, theirs = to_numpy(stacked.params[key])[k], to_numpy(value)
            assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) <= 1e-10, (k, key)
