"""``engine.cuda_graph``: the manual step captured in a CUDA graph equals the eager step.

On the CPU (every run of the suite) the logic is checked two ways, each against plain eager steps
(``loss_and_grads``, ``clip_grad_norm``, ``optimizer.step``; plain SGD asked to fuse:
``MLP.sgd_step``), bitwise, float64 and float32, every
optimiser variant, with and without clipping, one net and K stacked replicas with per-replica lrs,
over 30 steps with a second batch shape:

- ``eager``: ``GraphedStep(capture=False)`` runs its static-buffer step again at every call;
- ``replay``: ``CpuGraph`` does on the CPU what a CUDA graph does: it records the aten ops of one
  step, with the python numbers they were given, and replays those ops on the same tensors without
  running the python again. A number that should change from step to step but is frozen at capture
  (Adam's bias corrections, ``optimizer.steps``, SGD's first-step branch) makes the replay drift
  from eager steps: ``test_a_naive_capture_of_the_eager_step_drifts`` shows this on the eager step
  recorded as it is, so the equalities here can fail.

The trainer (records, checkpoints), the config checks and, on CUDA (``pytest.mark.cuda``), real
captures and the app with ``engine.cuda_graph=true`` against ``false`` are tested below.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_config
from torch.utils._python_dispatch import TorchDispatchMode

from testbed.app.preflight import preflight
from testbed.app.schema import ConfigError, validate
from testbed.engine import (
    MLP,
    OPTIMIZERS,
    Backend,
    MLPSpec,
    clip_grad_norm,
    get_optimizer,
    init_params,
    init_replica_params,
)
from testbed.engine.cuda_graph import GraphedStep
from testbed.tracking.files import read_metrics
from testbed.tracking.wandb_logger import NullLogger
from testbed.training import ManualTrainer

STEPS = 30
BATCH, SHORT = 16, 11  # every 7th batch is short: a second shape, a second graph
K = 3  # stacked replicas
SPEC = MLPSpec(in_features=10, out_features=3, depth=2, width=16, activation="tanh", bias_init="standard")

CASES = {
    "sgd": ("sgd", dict(lr=0.1)),
    "sgd_momentum_dampening": ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    "sgd_nesterov": ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    "sgd_weight_decay": ("sgd", dict(lr=0.1, weight_decay=1e-2)),
    "sgd_momentum_weight_decay": ("sgd", dict(lr=0.1, momentum=0.5, weight_decay=1e-2)),
    "adam": ("adam", dict(lr=1e-2)),
    "adam_l2": ("adam", dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2)),
    "adamw": ("adamw", dict(lr=1e-2, weight_decay=0.1)),
    "rmsprop": ("rmsprop", dict(lr=3e-3)),
    "rmsprop_centered": ("rmsprop", dict(lr=3e-3, centered=True)),
    "rmsprop_momentum": ("rmsprop", dict(lr=1e-3, momentum=0.9, weight_decay=1e-3)),
    "rmsprop_centered_momentum": ("rmsprop", dict(lr=1e-3, momentum=0.9, centered=True)),
    "adagrad": ("adagrad", dict(lr=0.05)),
    "adagrad_decay": ("adagrad", dict(lr=0.1, lr_decay=1e-2, weight_decay=1e-3,
                                      initial_accumulator_value=0.1)),
}
CLIP = 0.3  # below the typical gradient norm here: clipping is active


# -- a CUDA graph's semantics on the CPU -----------------------------------------------------------

class CpuGraph(TorchDispatchMode):
    """Records every aten op run under it (the op, its arguments as they were, its outputs) and
    ``replay`` runs the same ops again on the same tensors: outputs that alias an input (views,
    in-place ops) change by themselves, new outputs are copied into the recorded ones, as a CUDA
    graph writes into its static outputs. A host sync (``.item()``) cannot be captured: an error."""

    def __init__(self):
        super().__init__()
        self.ops: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            raise RuntimeError("a host sync (.item(), float(), bool() of a tensor) cannot be captured")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out

    def replay(self) -> None:
        for func, args, kwargs, out in self.ops:
            new = func(*args, **kwargs)
            if not func._schema.returns:  # in-place on lists (_foreach_add_): nothing returned
                continue
            outs = out if isinstance(out, tuple | list) else (out,)
            news = new if isinstance(new, tuple | list) else (new,)
            aliases = [r.alias_info is not None for r in func._schema.returns]
            if len(aliases) == 1:
                aliases = aliases * len(outs)
            for o, n, alias in zip(outs, news, aliases, strict=True):
                if isinstance(o, torch.Tensor) and not alias:
                    o.copy_(n)


def cpu_record(step) -> tuple:
    """``GraphedStep._record`` with a CpuGraph: the step runs (and is recorded) once."""
    graph = CpuGraph()
    with graph:
        outputs = step()
    return graph.replay, outputs


def make_graphed(net, optimizer, clip_norm, mode: str) -> GraphedStep:
    graphed = GraphedStep(net, optimizer, clip_norm, capture=False)
    if mode == "replay":
        graphed.capture = True
        graphed._record = cpu_record
    return graphed


# -- eager reference and data ----------------------------------------------------------------------

def eager_step(net, optimizer, x, y, clip_norm, replica_ndim=0):
    loss, grads = net.loss_and_grads(x, y)
    if clip_norm is not None:
        clip_grad_norm(grads, clip_norm, replica_ndim)
    optimizer.step(net.params, grads)
    return loss


def batches(backend: Backend, replicas: bool, steps: int = STEPS, seed: int = 1):
    rng = np.random.default_rng(seed)
    lead = (K,) if replicas else ()
    for step in range(steps):
        n = SHORT if step % 7 == 6 else BATCH
        x = rng.normal(size=(*lead, n, SPEC.in_features))
        y = rng.integers(0, SPEC.out_features, size=(*lead, n))
        yield backend.asarray(x), backend.labels(y)


def build(case: str, backend: Backend, replicas: bool):
    """Two identical (net, optimiser) pairs, one for the reference and one for the graph."""
    name, hyper = CASES[case]
    initial = init_replica_params(SPEC, list(range(K))) if replicas else init_params(SPEC, 0)
    pairs = []
    for _ in range(2):
        h = dict(hyper)
        if replicas:  # each replica its own learning rate
            h["lr"] = backend.asarray(np.array([0.5, 1.0, 2.0]) * hyper["lr"])
        net = MLP(SPEC, {k: backend.asarray(v) for k, v in initial.items()})
        pairs.append((net, get_optimizer(name, **h)))
    return pairs


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys(), key
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"optimizer state {key}.{name}"


def check_graphed_equals_eager(case, dtype, clip_norm, mode, replicas, device="cpu", tol=0.0,
                               steps=STEPS, fuse_sgd=False):
    """``fuse_sgd``: the steps ask for plain SGD's update fused into backward; where the optimiser
    allows it and nothing is clipped, the reference steps are ``MLP.sgd_step``."""
    backend = Backend("torch", dtype, device)
    (ref, ref_opt), (net, opt) = build(case, backend, replicas)
    graphed = make_graphed(net, opt, clip_norm, mode) if mode != "cuda" else GraphedStep(net, opt, clip_norm)
    evaluation = next(batches(backend, replicas, 1, seed=99))[0]
    fused = fuse_sgd and clip_norm is None and ref_opt.fused_lr() is not None

    def close(a, b, what):
        if tol == 0.0:
            assert torch.equal(a, b), f"{what} differs"
        else:
            err = float((a - b).double().norm() / max(float(b.double().norm()), 1e-30))
            assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"

    for step, (x, y) in enumerate(batches(backend, replicas, steps)):
        if fused:
            ref_loss = ref.sgd_step(x, y, ref_opt.fused_lr())
            ref_opt.count_step()
        else:
            ref_loss = eager_step(ref, ref_opt, x, y, clip_norm, int(replicas))
        loss = graphed(x, y, fuse_sgd=fuse_sgd)
        close(loss, ref_loss, f"step {step}: loss")
        # the diagnostics read the step's tensors off the net
        for what in ("pre_activations", "activations", "pre_activation_grads"):
            for layer, (t, r) in enumerate(zip(getattr(net, what), getattr(ref, what), strict=True)):
                close(t, r, f"step {step}: {what}[{layer}]")
        assert net.grads.keys() == ref.grads.keys()
        for key in ref.grads:
            close(net.grads[key], ref.grads[key], f"step {step}: grads[{key}]")
        if step % 5 == 4 and step < steps - 1:  # an evaluation in between rebinds the net's lists
            net.forward(evaluation)
    for key in ref.params:
        close(net.params[key], ref.params[key], f"params[{key}]")
    assert opt.steps == ref_opt.steps == steps
    if tol == 0.0:
        assert_same_state(opt.state, ref_opt.state)
    # both batch shapes got a graph; a replay leaves the graph's static outputs on the net
    assert len(graphed.graphs) == 2
    assert all(key[0] == fused for key in graphed.graphs)
    if fused:  # the fused step keeps nothing of the pass
        assert not net.grads and not net.pre_activations and not net.pre_activation_grads
    if mode != "eager":
        assert all(c.replay is not None for c in graphed.graphs.values())
        last = graphed.graphs[(fused, tuple(x.shape), x.dtype, tuple(y.shape), y.dtype)]
        assert loss is last.outputs.loss
        assert fused or net.pre_activations[0] is last.outputs.pre_activations[0]
    return graphed


# -- CPU: the static-buffer step, eagerly and replayed ---------------------------------------------

@pytest.mark.parametrize("replicas", [False, True], ids=["single", "replicas"])
@pytest.mark.parametrize("mode", ["eager", "replay"])
@pytest.mark.parametrize("clip_norm", [None, CLIP], ids=["noclip", "clip"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_graphed_steps_equal_eager_steps_bitwise(case, dtype, clip_norm, mode, replicas):
    check_graphed_equals_eager(case, dtype, clip_norm, mode, replicas)


@pytest.mark.parametrize("replicas", [False, True], ids=["single", "replicas"])
@pytest.mark.parametrize("mode", ["eager", "replay"])
@pytest.mark.parametrize("clip_norm", [None, CLIP], ids=["noclip", "clip"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", ["sgd", "sgd_weight_decay", "adam"])
def test_graphed_steps_asked_to_fuse_equal_the_eager_steps_bitwise(case, dtype, clip_norm, mode, replicas):
    """Plain SGD without clipping: the graph is ``MLP.sgd_step``'s, as the eager trainer's steps
    that record nothing (per-replica lrs too); any other update, or clipping: the usual step."""
    check_graphed_equals_eager(case, dtype, clip_norm, mode, replicas, fuse_sgd=True)


def test_every_optimizer_and_variant_is_covered():
    assert {name for name, _ in CASES.values()} == set(OPTIMIZERS)
    hyper = [h for _, h in CASES.values()]
    for variant in ("momentum", "dampening", "nesterov", "centered", "weight_decay", "lr_decay"):
        assert any(variant in h for h in hyper), variant
    assert any(name == "sgd" and "weight_decay" in h and "momentum" not in h for name, h in CASES.values())


@pytest.mark.parametrize("name, hyper, capture_at", [
    ("adam", dict(lr=1e-2), 1),  # bias corrections of step 2 forever
    ("adagrad", dict(lr=0.1, lr_decay=0.1), 1),  # the decayed lr of step 2 forever
    ("sgd", dict(lr=0.1, momentum=0.9), 0),  # the first step's "buffer = copy of g" forever
])
def test_a_naive_capture_of_the_eager_step_drifts(name, hyper, capture_at):
    """The trap, shown with the same CpuGraph: the eager step recorded as it is freezes python
    numbers, and its replays are not the eager steps (nor counted in ``optimizer.steps``)."""
    backend = Backend("torch", "float64")
    (ref, ref_opt), (net, opt) = [(MLP.create(SPEC, 0, backend), get_optimizer(name, **hyper))
                                  for _ in range(2)]
    x, y = next(batches(backend, False, 1))
    for _ in range(capture_at):
        eager_step(net, opt, x, y, None)
    graph = CpuGraph()
    with graph:
        eager_step(net, opt, x, y, None)
    for _ in range(8):
        graph.replay()
    for _ in range(capture_at + 9):
        eager_step(ref, ref_opt, x, y, None)
    assert opt.steps == capture_at + 1 != ref_opt.steps
    assert not all(torch.equal(net.params[k], ref.params[k]) for k in ref.params)
    # GraphedStep on the same batches is the eager steps exactly
    (ref, ref_opt), (net, opt) = [(MLP.create(SPEC, 0, backend), get_optimizer(name, **hyper))
                                  for _ in range(2)]
    graphed = make_graphed(net, opt, None, "replay")
    for _ in range(capture_at + 9):
        eager_step(ref, ref_opt, x, y, None)
        graphed(x, y)
    assert opt.steps == ref_opt.steps
    assert all(torch.equal(net.params[k], ref.params[k]) for k in ref.params)


def test_the_first_update_runs_eagerly_and_the_second_captures():
    backend = Backend("torch", "float64")
    (_, _), (net, opt) = build("sgd_momentum_dampening", backend, False)
    graphed = make_graphed(net, opt, None, "replay")
    data = batches(backend, False)
    graphed(*next(data))
    assert not graphed.graphs and "momentum_buffer" in opt.state["W1"]  # state from the eager step
    graphed(*next(data))
    assert len(graphed.graphs) == 1 and opt.steps == 2


def test_replaced_parameters_are_captured_again():
    """A graph holds addresses: parameters (or lr) replaced by new tensors mean a new capture."""
    backend = Backend("torch", "float64")
    (ref, ref_opt), (net, opt) = build("adam", backend, False)
    graphed = make_graphed(net, opt, None, "replay")
    data = list(batches(backend, False, 6))
    for x, y in data[:3]:
        eager_step(ref, ref_opt, x, y, None)
        graphed(x, y)
    old = list(graphed.graphs.values())
    assert len(old) == 1
    net.params["W1"] = net.params["W1"].clone()
    ref.params["W1"] = ref.params["W1"].clone()
    for x, y in data[3:]:
        eager_step(ref, ref_opt, x, y, None)
        graphed(x, y)
    assert len(graphed.graphs) == 1 and all(c is not old[0] for c in graphed.graphs.values())
    assert all(torch.equal(net.params[k], ref.params[k]) for k in ref.params)


def test_graphed_step_needs_torch_tensors_and_cuda_to_capture():
    net = MLP.create(SPEC, 0, Backend("numpy"))
    with pytest.raises(TypeError, match="torch backend"):
        GraphedStep(net, get_optimizer("sgd"))
    net = MLP.create(SPEC, 0, Backend("torch"))
    assert GraphedStep(net, get_optimizer("sgd")).capture is False  # on the CPU: runs eagerly
    with pytest.raises(ValueError, match="CUDA"):
        GraphedStep(net, get_optimizer("sgd"), capture=True)


# -- the trainer: records and checkpoints ----------------------------------------------------------

def make_trainer(backend: Backend, mode: str | None, name: str = "adam", hyper: dict | None = None,
                 clip_norm: float | None = CLIP) -> ManualTrainer:
    """A ManualTrainer; with ``mode``, its steps go through a GraphedStep as with cuda_graph=True
    (on CUDA: cuda_graph=True itself)."""
    hyper = hyper or dict(lr=1e-2)
    initial = init_params(SPEC, 0)
    if mode == "cuda":
        trainer = ManualTrainer(SPEC, initial, backend, name, hyper, clip_norm, cuda_graph=True)
    else:
        trainer = ManualTrainer(SPEC, initial, backend, name, hyper, clip_norm)
        if mode is not None:
            trainer.graphed = make_graphed(trainer.net, trainer.optimizer, clip_norm, mode)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, SPEC.in_features))
    y = rng.integers(0, SPEC.out_features, size=200)
    trainer.load_data(x[:150], y[:150], x[150:], y[150:])
    return trainer


def indices(steps: int, seed: int = 2):
    rng = np.random.default_rng(seed)
    return [rng.choice(150, size=SHORT if s % 5 == 4 else BATCH, replace=False) for s in range(steps)]


TRAINER_UPDATES = {  # (optimiser, hyper, clip_norm)
    "adam_clip": ("adam", dict(lr=1e-2), CLIP),
    "sgd": ("sgd", dict(lr=0.1), None),  # the steps that record nothing fuse the update
}


def assert_graph_kinds(step: GraphedStep, update_rule: str) -> None:
    """With plain SGD the steps that record nothing got fused graphs, the logged ones unfused."""
    fused = sorted({key[0] for key in step.graphs})
    assert fused == ([False, True] if update_rule == "sgd" else [False])


@pytest.mark.parametrize("update_rule", sorted(TRAINER_UPDATES))
@pytest.mark.parametrize("mode", ["eager", "replay"])
def test_trainer_records_and_updates_as_the_eager_trainer(mode, update_rule):
    """As the app's loop: evaluate before a logged step, record it, the last step only records."""
    backend = Backend("torch", "float64")
    plain, graphed = (make_trainer(backend, m, *TRAINER_UPDATES[update_rule]) for m in (None, mode))
    idx = indices(13)
    for step, i in enumerate(idx):
        log_now, update = step % 4 == 0 or step == 12, step < 12
        losses = []
        weights = [graphed.net.params[f"W{layer}"].clone() for layer in range(1, SPEC.num_layers + 1)]
        for trainer in (plain, graphed):
            if log_now:
                trainer.evaluate("test")
            losses.append(trainer.step(i, update=update, record=log_now))
        assert losses[0] == losses[1]
        if log_now and update:  # the update: the weights after the step less those before it
            record = graphed.record
            for w, before, u in zip(record["weights"], weights, record["updates"], strict=True):
                assert torch.equal(u, w - before) and bool(u.abs().max() > 0)
        for key in plain.grads:
            assert torch.equal(plain.grads[key], graphed.grads[key])
        if log_now:
            assert plain.record.keys() == graphed.record.keys()
            for key, tensors in plain.record.items():
                if tensors is None:
                    assert graphed.record[key] is None and not update
                    continue
                assert len(tensors) == len(graphed.record[key]) > 0
                assert all(torch.equal(a, b) for a, b in zip(tensors, graphed.record[key], strict=True)), key
    assert plain.optimizer.steps == graphed.optimizer.steps == 12
    assert all(torch.equal(plain.net.params[k], graphed.net.params[k]) for k in plain.net.params)
    assert plain.evaluate("test") == graphed.evaluate("test")
    assert_graph_kinds(graphed.graphed, update_rule)


def _tensors(trainer: ManualTrainer) -> list:
    state = [t for s in trainer.optimizer.state.values() for t in s.values()]
    return list(trainer.net.params.values()) + state


def check_checkpoint_round_trip(backend: Backend, mode: str, name: str, hyper: dict, tol: float = 0.0):
    trainer = make_trainer(backend, mode, name, hyper)
    idx = indices(16)
    for i in idx[:8]:
        trainer.step(i)
    saved = trainer.state_dict()
    held = _tensors(trainer)
    first = [trainer.step(i) for i in idx[8:]]
    first_params = {k: v.clone() for k, v in trainer.net.params.items()}
    trainer.load_state_dict(saved)  # in place: the graphs captured before still point at the state
    assert all(a is b for a, b in zip(_tensors(trainer), held, strict=True))
    again = [trainer.step(i) for i in idx[8:]]
    fresh = make_trainer(backend, None, name, hyper)  # the same checkpoint, continued eagerly
    fresh.load_state_dict(saved)
    eager = [fresh.step(i) for i in idx[8:]]
    for losses in (again, eager):
        assert np.allclose(losses, first, rtol=tol, atol=0) if tol else losses == first
    for other in (trainer, fresh):
        for key, value in first_params.items():
            err = float((other.net.params[key] - value).norm() / value.norm())
            assert err <= tol, f"{key}: {err:.3g}"
    assert trainer.optimizer.steps == fresh.optimizer.steps == 16


@pytest.mark.parametrize("mode", ["eager", "replay"])
@pytest.mark.parametrize("name, hyper", [("adam", dict(lr=1e-2)), ("sgd", dict(lr=0.1, momentum=0.9)),
                                         ("rmsprop", dict(lr=3e-3, centered=True, momentum=0.5))],
                         ids=["adam", "sgd_momentum", "rmsprop"])
def test_checkpoint_round_trip_mid_run_continues_the_same(name, hyper, mode):
    check_checkpoint_round_trip(Backend("torch", "float64"), mode, name, hyper)


def test_load_state_dict_fills_the_existing_tensors_and_adds_missing_state():
    backend = Backend("torch", "float64")
    a, b = make_trainer(backend, None), make_trainer(backend, None)
    for i in indices(3):
        a.step(i)
    assert not b.optimizer.state
    b.load_state_dict(a.state_dict())  # b has no state yet: it is created
    held = _tensors(b)
    for i in indices(2, seed=5):
        a.step(i)
    b.load_state_dict(a.state_dict())
    assert all(x is y for x, y in zip(_tensors(b), held, strict=True))
    assert_same_state(a.optimizer.state, b.optimizer.state)
    assert b.optimizer.steps == 5


# -- config checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, names", [
    (["device=cpu"], "device=cpu"),
    (["device=auto", "engine.backend=numpy"], "engine.backend=numpy"),
    (["device=cuda", "engine=torch"], "engine=torch"),
])
def test_cuda_graph_config_errors_name_the_key_and_what_is_allowed(overrides, names):
    cfg = compose_config("engine.cuda_graph=true", *overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    message = str(error.value)
    assert "\n" not in message and message.startswith("engine.cuda_graph=True is not allowed")
    assert names in message and "must be false" in message


@pytest.mark.parametrize("overrides", [["device=cuda"], ["device=auto", "engine=manual"],
                                       ["device=cuda", "engine=both"],
                                       ["device=cuda", "engine=manual", "train.replicas=2"]])
def test_cuda_graph_configs_that_can_run_pass_validate(overrides):
    validate(compose_config("engine.cuda_graph=true", *overrides))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_graph_without_cuda_stops_before_any_work():
    from testbed.app.run import manual_backend

    for device in ("auto", "cuda"):
        with pytest.raises(ConfigError) as error:
            preflight(["engine.cuda_graph=true", f"device={device}"])
        assert "\n" not in str(error.value) and "no CUDA device" in str(error.value)
    cfg = compose_config("engine.cuda_graph=true", "engine.backend=torch", "model.dtype=float64")
    with pytest.raises(ConfigError, match=r"^engine.cuda_graph=True is not allowed here") as error:
        manual_backend(cfg, "cpu")  # what the app builds its trainers on: refused before any trainer
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="cuda_graph=True needs the torch backend on a CUDA device"):
        make_trainer(Backend("torch", "float64", "cpu"), "cuda")  # the trainer refuses it too


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_the_app_refuses_cuda_graph_at_run_time_when_auto_finds_no_cuda(tmp_path):
    """device=auto resolved to cpu inside a job (preflight ran elsewhere): one line, nothing written."""
    from testbed.app.run import train

    cfg = compose_config("engine.cuda_graph=true", "device=auto", "engine=manual", "logger=none",
                         "train.steps=2", "model.width=8", "train.progress=false")
    with pytest.warns(UserWarning, match="device=auto"), pytest.raises(ConfigError) as error:
        train(cfg, tmp_path, NullLogger())
    assert "\n" not in str(error.value) and "engine.cuda_graph" in str(error.value)
    assert not list(tmp_path.iterdir())


# -- CUDA: real captures ---------------------------------------------------------------------------

CUDA_TOL = {"float64": 1e-12, "float32": 1e-5}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_graph_replay_equals_eager_steps(case, dtype):
    check_graphed_equals_eager(case, dtype, None, "cuda", False, device="cuda", tol=CUDA_TOL[dtype], steps=50)


@pytest.mark.cuda
@pytest.mark.parametrize("replicas", [False, True], ids=["single", "replicas"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_graph_replay_of_the_fused_sgd_step_equals_eager_fused_steps(dtype, replicas):
    check_graphed_equals_eager("sgd", dtype, None, "cuda", replicas, device="cuda", tol=CUDA_TOL[dtype],
                               steps=50, fuse_sgd=True)


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["sgd_nesterov", "adam", "adagrad_decay", "rmsprop_centered_momentum"])
def test_cuda_graph_replay_with_clipping_and_replicas_equals_eager_steps(case):
    for replicas in (False, True):
        check_graphed_equals_eager(case, "float64", CLIP, "cuda", replicas, device="cuda", tol=1e-12,
                                   steps=50)


@pytest.mark.cuda
@pytest.mark.parametrize("name, hyper", [("adam", dict(lr=1e-2)), ("sgd", dict(lr=0.1, momentum=0.9))],
                         ids=["adam", "sgd_momentum"])
def test_cuda_graph_checkpoint_round_trip_continues_the_same(name, hyper):
    check_checkpoint_round_trip(Backend("torch", "float64", "cuda"), "cuda", name, hyper, tol=1e-12)


@pytest.mark.cuda
def test_cuda_graph_trainer_records_as_the_eager_trainer():
    backend = Backend("torch", "float64", "cuda")
    plain, graphed = make_trainer(backend, None), make_trainer(backend, "cuda")
    assert graphed.graphed is not None and graphed.graphed.capture
    for step, i in enumerate(indices(13)):
        log_now, update = step % 4 == 0 or step == 12, step < 12
        losses = [t.step(i, update=update, record=log_now) for t in (plain, graphed)]
        assert math.isclose(losses[0], losses[1], rel_tol=1e-12)
        if log_now:
            for key, tensors in plain.record.items():
                for a, b in zip(tensors or [], graphed.record[key] or [], strict=True):
                    assert float((a - b).norm()) <= 1e-12 * max(float(a.norm()), 1e-300), key
    assert any(c.replay is not None for c in graphed.graphed.graphs.values())


def _close(key: str, a, b, tol: float = 1e-10) -> bool:
    if not isinstance(a, float) or not isinstance(b, float):
        return a == b
    if math.isnan(a) or math.isinf(a) or math.isnan(b) or math.isinf(b):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return abs(a - b) <= tol * max(abs(a), abs(b)) + 1e-15


@pytest.mark.cuda
@pytest.mark.parametrize("extra", [[], ["optim=adam", "optim.lr=0.01", "optim.clip_norm=0.5"]],
                         ids=["sgd", "adam-clip"])
def test_app_with_cuda_graph_equals_the_app_without(tmp_path, monkeypatch, extra):
    """The same run with engine.cuda_graph=true and false: metrics and summary equal (float64,
    1e-10), and the graphed run really replayed captured graphs."""
    from testbed.app.run import train

    captures = []
    record = GraphedStep._record

    def counting_record(self, step):
        captures.append(1)
        return record(self, step)

    monkeypatch.setattr(GraphedStep, "_record", counting_record)
    base = ["device=cuda", "engine=manual", "logger=none", "train.steps=40", "train.log_every=5",
            "model.width=32", "model.depth=3", "data.batch_size=48", "train.checkpoint_every=10",
            "train.progress=false", *extra]
    runs = {}
    for graph in ("false", "true"):
        run_dir = Path(tmp_path / graph)
        run_dir.mkdir()
        summary = train(compose_config(*base, f"engine.cuda_graph={graph}"), run_dir, NullLogger())
        assert summary["status"] == "completed"
        runs[graph] = (read_metrics(run_dir / "metrics.jsonl", numbers=True), summary)
    assert captures, "engine.cuda_graph=true captured no graph (is it passed to ManualTrainer?)"
    (rows_a, summary_a), (rows_b, summary_b) = runs["false"], runs["true"]
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] and len(rows_a) > 5
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        assert list(row_a) == list(row_b)
        bad = {k: (row_a[k], row_b[k]) for k in row_a if not _close(k, row_a[k], row_b[k])}
        assert not bad, f"step {row_a['step']}: {bad}"
    bad = {k: (summary_a[k], summary_b[k]) for k in summary_a
           if k != "wall_s" and not _close(k, summary_a[k], summary_b[k])}
    assert not bad, bad


# -- replicas ----------------------------------------------------------------------------------------

def make_stacked(backend: Backend, mode: str | None, update_rule: str = "adam_clip"):
    """A StackedTrainer of K replicas (``TRAINER_UPDATES[update_rule]``, per-replica lrs); with
    ``mode`` its updating steps go through a GraphedStep as with cuda_graph=True (on CUDA:
    cuda_graph=True itself)."""
    from testbed.training import StackedTrainer

    name, hyper, clip_norm = TRAINER_UPDATES[update_rule]
    initial = init_replica_params(SPEC, list(range(K)))
    lrs = [hyper["lr"] * f for f in (1.0, 2.0, 0.5)]
    trainer = StackedTrainer(SPEC, initial, backend, name, hyper, lrs, clip_norm, cuda_graph=mode == "cuda")
    if mode not in (None, "cuda"):
        trainer.graphed = make_graphed(trainer.net, trainer.optimizer, clip_norm, mode)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, SPEC.in_features)), rng.integers(0, SPEC.out_features, size=200)
    trainer.load_data(x[:150], y[:150], x[150:], y[150:])
    return trainer


def check_stacked_graphed(backend: Backend, mode: str, tol: float, update_rule: str = "adam_clip") -> None:
    """Steps with records, a replica dropped from the stack (as when one diverges: the graph is
    captured again), a checkpoint loaded into it, more steps: the graphed stack equals the plain one."""
    plain, graphed = make_stacked(backend, None, update_rule), make_stacked(backend, mode, update_rule)
    rng = np.random.default_rng(3)

    def steps(count: int, replicas: int):
        for step in range(count):
            idx = np.stack([rng.choice(150, size=BATCH, replace=False) for _ in range(replicas)])
            losses = [t.step(idx, record=step % 3 == 0) for t in (plain, graphed)]
            np.testing.assert_allclose(losses[1], losses[0], rtol=tol, atol=0)
            if step % 3 == 0:
                for key, tensors in plain.record.items():
                    for a, b in zip(tensors or [], graphed.record[key] or [], strict=True):
                        np.testing.assert_allclose(to_np(b), to_np(a), rtol=tol, atol=tol * 1e-3)

    steps(8, K)
    for trainer in (plain, graphed):
        trainer.keep(np.array([0, 2]))
    steps(6, 2)
    state = plain.state_dict()
    for trainer in (plain, graphed):
        trainer.load_state_dict(state)
    steps(6, 2)
    for key in plain.net.params:
        np.testing.assert_allclose(to_np(graphed.net.params[key]), to_np(plain.net.params[key]), rtol=tol,
                                   atol=tol * 1e-3)
    assert graphed.optimizer.steps == plain.optimizer.steps == 20
    assert_graph_kinds(graphed.graphed, update_rule)


def to_np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


@pytest.mark.parametrize("update_rule", sorted(TRAINER_UPDATES))
@pytest.mark.parametrize("mode", ["eager", "replay"])
def test_a_graphed_replica_stack_equals_the_plain_one_through_a_cut_and_a_checkpoint(mode, update_rule):
    check_stacked_graphed(Backend("torch", "float64"), mode, tol=0.0, update_rule=update_rule)


@pytest.mark.cuda
@pytest.mark.parametrize("update_rule", sorted(TRAINER_UPDATES))
def test_a_cuda_graphed_replica_stack_equals_the_plain_one(update_rule):
    check_stacked_graphed(Backend("torch", "float64", "cuda"), "cuda", tol=1e-12, update_rule=update_rule)


@pytest.mark.cuda
def test_replica_runs_with_cuda_graph_equal_those_without(tmp_path):
    """train_replicas with engine.cuda_graph true and false: every replica's metrics and summary
    equal (float64, 1e-10), a diverging replica dropped on the way."""
    from testbed.app.replicas import ReplicaPoint, train_replicas

    points = [ReplicaPoint(0, 0.01, "xavier_uniform", 1.0), ReplicaPoint(1, 50.0, "xavier_uniform", 1.0),
              ReplicaPoint(2, 0.02, "kaiming_normal", 1.0)]
    base = ["device=cuda", "engine=manual", "logger=none", "train.steps=30", "train.log_every=5",
            "model.width=16", "model.depth=2", "optim=adam", "train.max_loss=8", "train.progress=false"]
    runs = {}
    for graph in ("false", "true"):
        dirs = [tmp_path / graph / str(k) for k in range(3)]
        summaries = train_replicas(compose_config(*base, f"engine.cuda_graph={graph}"), points, dirs,
                                   [NullLogger() for _ in points])
        runs[graph] = [(read_metrics(d / "metrics.jsonl", numbers=True), s) for d, s in zip(dirs, summaries,
                                                                                           strict=True)]
    assert [s["status"] for _, s in runs["true"]] == ["completed", "diverged", "completed"]
    for (rows_a, summary_a), (rows_b, summary_b) in zip(runs["false"], runs["true"], strict=True):
        assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
        for row_a, row_b in zip(rows_a, rows_b, strict=True):
            bad = {k: (row_a[k], row_b[k]) for k in row_a if not _close(k, row_a[k], row_b[k])}
            assert not bad, f"step {row_a['step']}: {bad}"
        bad = {k: (summary_a[k], summary_b[k]) for k in summary_a
               if k != "wall_s" and not _close(k, summary_a[k], summary_b[k])}
        assert not bad, bad
