"""The engine's boundary: no autograd, no torch.nn, no torch.optim, and no graph built.

Two checks. Statically, every module of ``testbed/engine`` is parsed with ``ast``: no import of
torch.autograd / torch.nn / torch.optim / torch.func (in any spelling), no attribute chain
through them (``torch.nn.functional.relu``), no autograd attribute (``requires_grad``,
``grad_fn``, ``.grad``, ``retain_grad``, ``detach_``...), no zero-argument ``.backward()`` (the
engine's own ``backward(da, cache)`` always takes the upstream gradient), no grad-mode switches.
Dynamically, a full training step on the torch backend, with autograd globally on, must produce
only tensors with ``requires_grad`` False and ``grad_fn`` None: outputs, loss, parameters,
gradients, dL/ds^l, dL/dx, clipping norm and every optimiser's state.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import device_params, network_data

import testbed.engine
from testbed.engine import MLP, OPTIMIZERS, Backend, MLPSpec, clip_grad_norm, get_optimizer

ENGINE_DIR = Path(testbed.engine.__file__).parent
ENGINE_MODULES = sorted(ENGINE_DIR.glob("*.py"))

FORBIDDEN_MODULES = ("torch.autograd", "torch.nn", "torch.optim", "torch.func", "functorch",
                     "testbed.reference")
FORBIDDEN_ATTRIBUTES = {"autograd", "nn", "optim", "func", "requires_grad", "requires_grad_",
                        "grad_fn", "grad", "retain_grad", "retains_grad", "register_hook",
                        "detach_", "no_grad", "enable_grad", "set_grad_enabled", "inference_mode",
                        "is_grad_enabled", "Parameter"}


def _is_forbidden_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in FORBIDDEN_MODULES)


def boundary_violations(source: str, filename: str = "<source>") -> list[str]:
    """Every use of autograd, torch.nn or torch.optim in ``source``, as 'file:line: what'."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if _is_forbidden_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [f"{module}.{a.name}" for a in node.names]
            found += [f"{where}: from {module} import {n.rsplit('.', 1)[1]}"
                      for n in [module, *names] if _is_forbidden_module(n)][:1]
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            found.append(f"{where}: .{node.attr}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "backward" and not node.args and not node.keywords):
            found.append(f"{where}: .backward() (autograd's)")
    return found


@pytest.mark.parametrize("path", ENGINE_MODULES, ids=[p.name for p in ENGINE_MODULES])
def test_engine_module_uses_no_autograd(path):
    assert boundary_violations(path.read_text(), path.name) == []


def test_the_engine_modules_are_all_checked():
    names = {p.stem for p in ENGINE_MODULES}
    assert {"activations", "backend", "layers", "losses", "network", "optim", "init"} <= names


@pytest.mark.parametrize("snippet", [
    "import torch.nn", "import torch.nn.functional as F", "from torch import nn",
    "from torch import optim", "from torch.autograd import grad", "import torch.autograd",
    "from torch.nn import functional", "import torch\ny = torch.nn.functional.relu(x)",
    "y = torch.autograd.grad(l, x)", "x.requires_grad_(True)", "g = x.grad", "loss.backward()",
    "with torch.no_grad():\n    pass", "from testbed.reference import Lockstep",
])
def test_the_checker_catches(snippet):
    assert boundary_violations(snippet), snippet


def test_the_checker_allows_the_engines_own_backward():
    assert boundary_violations("ds = act.backward(da, cache)\ng = loss.backward(cache)") == []


def test_importing_the_engine_does_not_import_the_reference():
    code = ("import sys, testbed.engine; "
            "print(sorted(m for m in sys.modules if m.startswith('testbed.reference')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_importing_training_imports_nothing_of_the_app():
    """``testbed.training`` sits below the app: no app module, config, tracking or data loading."""
    code = ("import sys, testbed.training; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('hydra', 'omegaconf', 'wandb', 'yaml') or m.startswith(('testbed.app', 'testbed.tracking', "
            "'testbed.data', 'testbed.experiments'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def engine_tensors(value, where: str = ""):
    """Every torch tensor inside ``value`` (dicts, lists, tuples), with where it was found."""
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from engine_tensors(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from engine_tensors(item, f"{where}[{index}]")


OPTIMIZER_HYPER = {"sgd": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
                   "adam": dict(lr=1e-2, weight_decay=1e-3), "adamw": dict(lr=1e-2),
                   "rmsprop": dict(lr=1e-2, momentum=0.5, centered=True, weight_decay=1e-3),
                   "adagrad": dict(lr=0.1, weight_decay=1e-3)}


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_a_training_step_builds_no_graph(optimizer, device):
    backend = Backend("torch", "float64", device)
    spec = MLPSpec(in_features=4, out_features=3, depth=2, width=5, activation="gelu",
                   bias_init="standard", loss="cross_entropy")
    mlp = MLP.create(spec, seed=0, backend=backend)
    opt = get_optimizer(optimizer, **OPTIMIZER_HYPER[optimizer])
    x, y = network_data(spec, np.random.default_rng(0), batch=6)
    x, y = backend.asarray(x), backend.labels(y)
    produced = {}
    with torch.set_grad_enabled(True):
        assert torch.is_grad_enabled()
        for step in range(2):  # the second step runs on optimiser state
            loss, grads = mlp.loss_and_grads(x, y, input_grad=True)
            norm = clip_grad_norm(grads, 0.5)
            opt.step(mlp.params, grads)
            produced[step] = dict(loss=loss, norm=norm, grads=dict(grads), params=dict(mlp.params),
                                  state=opt.state, pre_activations=list(mlp.pre_activations),
                                  activations=list(mlp.activations),
                                  pre_activation_grads=list(mlp.pre_activation_grads),
                                  input_grad=mlp.input_grad, output=mlp.forward(x))
    tensors = list(engine_tensors(produced))
    assert len(tensors) > 30
    assert any("exp_avg" in w or "momentum_buffer" in w or "sum" in w for w, _ in tensors)
    for where, tensor in tensors:
        assert not tensor.requires_grad, f"{where} requires grad"
        assert tensor.grad_fn is None, f"{where} has grad_fn {tensor.grad_fn}"
        assert tensor.device.type == device
