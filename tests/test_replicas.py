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


# -- the app's trainer: the stack in blocks -----------------------------------------------------------

def make_replica_trainer(backend: str, block: int, count: int = 5):
    """K replicas (Adam, per-replica lrs, clipping) in blocks of ``block``, on the same data."""
    from testbed.training import ReplicaTrainer

    spec = MLPSpec(6, 4, depth=3, width=9, activation="tanh")
    seeds = list(range(count))
    inits = [INITS[k % 3] for k in seeds]
    trainer = ReplicaTrainer(spec, init_replica_params(spec, seeds, inits, [1.0] * count),
                             Backend(backend, "float64"), "adam", {}, [0.01 * (k + 1) for k in seeds],
                             clip_norm=0.5, block=block)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 6)), rng.integers(0, 4, 120)
    trainer.load_data(x[:100], y[:100], x[100:], y[100:])
    return trainer


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_stack_in_blocks_trains_as_one_stack(backend):
    """Blocks of 2 (and of 1) against one block of 5: the same losses, records, evaluations and
    per-replica parameters and gradients, through a cut (a replica leaving) and a checkpoint swapped
    between the two layouts (``state_dict`` is that of the whole stack, whatever the blocks)."""
    whole, blocks, singles = (make_replica_trainer(backend, b) for b in (5, 2, 1))
    assert [len(t.blocks) for t in (whole, blocks, singles)] == [1, 3, 5]
    trainers = (whole, blocks, singles)
    rng = np.random.default_rng(1)

    def steps(count: int):
        for step in range(count):
            idx = np.stack([rng.choice(100, size=8, replace=False) for _ in range(whole.count)])
            losses = [t.step(idx, record=step % 2 == 0) for t in trainers]
            for other in losses[1:]:
                np.testing.assert_allclose(other, losses[0], rtol=1e-12, atol=0)
            for j in range(whole.count):
                for t in trainers[1:]:
                    for key, grad in whole.replica_grads(j).items():
                        np.testing.assert_allclose(to_numpy(t.replica_grads(j)[key]), to_numpy(grad),
                                                   rtol=1e-12, atol=1e-15)
            if step % 2 == 0:
                records = [t.replica_records() for t in trainers]
                assert [len(r) for r in records] == [whole.count] * 3
                for record in records[1]:
                    assert record.keys() == records[0][0].keys()
                for mine, theirs in zip(records[2], records[0], strict=True):
                    for a, b in zip(mine["weight_grads"], theirs["weight_grads"], strict=True):
                        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)

    steps(4)
    for t in trainers:
        t.keep(np.array([0, 1, 3]))  # replica 2 leaves: a block of 2 is cut, a block of 1 dropped
    assert [t.count for t in trainers] == [3, 3, 3] and len(singles.blocks) == 3
    steps(3)
    state = blocks.state_dict()
    assert {key: value.shape for key, value in state["params"].items()} == {
        key: value.shape for key, value in whole.state_dict()["params"].items()}
    whole.load_state_dict(state)
    singles.load_state_dict(whole.state_dict())
    steps(3)
    for split in ("train", "test"):
        results = [t.evaluate(split) for t in trainers]
        for losses, accuracies in results[1:]:
            np.testing.assert_allclose(losses, results[0][0], rtol=1e-12)
            np.testing.assert_array_equal(accuracies, results[0][1])
    for j in range(3):
        for key, value in whole.params_numpy(j).items():
            np.testing.assert_allclose(singles.params_numpy(j)[key], value, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(to_numpy(blocks.replica_params(j)[key]), value, rtol=1e-12, atol=1e-15)
    assert all(b.optimizer.steps == 10 for t in trainers for b in t.blocks)


def test_replica_block_keeps_a_cpu_blocks_largest_matrix_within_its_budget():
    from testbed.training.replicas import BLOCK_BYTES, replica_block

    for depth, width, batch, dtype in [(4, 64, 32, "float32"), (20, 256, 128, "float32"),
                                       (8, 512, 256, "float64"), (2, 4096, 4096, "float32")]:
        spec = MLPSpec(64, 10, depth=depth, width=width)
        backend = Backend("torch", dtype)
        block = replica_block(spec, batch, backend)
        itemsize = 8 if dtype == "float64" else 4
        largest = max(batch, width) * width * itemsize  # the widest activation or weight of one replica
        assert block >= 1
        assert block == 1 or block * largest <= BLOCK_BYTES < (block + 1) * largest
        assert replica_block(spec, batch, backend, requested=3) == 3
    cuda = Backend("torch", "float32", "cuda")  # a description only: nothing is allocated on it
    assert replica_block(MLPSpec(64, 10, depth=20, width=256), 128, cuda) >= 2**31
