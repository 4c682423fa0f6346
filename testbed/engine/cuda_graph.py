"""The manual training step, captured once in a CUDA graph and replayed.

A small MLP's step launches some hundreds of kernels of a few microseconds
each; on a GPU its time goes to launching them (python, dispatch, the driver),
not to the arithmetic. A CUDA graph records the kernels of one step once, with
the addresses of every tensor they read and write, and replays them all with
one launch (https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs).

Replaying is exactly the captured arithmetic on whatever those addresses hold
now. So that a replay is the step the eager code would take:

- the batch is copied into static input buffers, whose addresses the graph holds;
- parameters and optimiser state are only ever changed in place (a graph
  captured before a checkpoint was loaded still points at them);
- python-side values are frozen at capture. The optimiser's per-step numbers
  (``Optimizer.step_scalars``: Adam's bias corrections, Adagrad's decayed lr)
  are computed in python before each replay, as the eager step computes them,
  and written into 0-dim device tensors the graph reads; ``optimizer.steps`` is
  counted in python. SGD's first update is not like the others (the momentum
  buffer starts as a copy of the gradient) and every optimiser creates its
  state there: the first update of a run (``optimizer.steps == 0``) runs
  eagerly, and the graph captures the steps after it;
- before capture, CUDA needs a few warm-up steps (on a side stream: cuBLAS
  handles, workspaces, the allocator); they are real steps, so the parameters
  and optimiser state are saved before and copied back, in place, after.

Plain SGD without clipping can fuse its update into backward (``MLP.sgd_step``),
as the eager trainer does on the steps that record nothing; such a step is a
graph of its own (``fuse_sgd=True``), and the replays then take the same
arithmetic as the eager run.

Each (fused, x.shape, y.shape) gets its own graph (a short last batch: a second
one), up to ``MAX_GRAPHS``; a batch of any further kind runs eagerly. If the net's
parameters, the optimiser's state or its lr are replaced by other objects
(not changed in place), the graphs are dropped and captured again.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from testbed.engine.network import MLP
from testbed.engine.optim import Optimizer, clip_grad_norm, fused_step_lr

MAX_GRAPHS = 4  # (fused, batch shape) pairs with a graph of their own; further ones run eagerly
WARMUP_STEPS = 3  # as torch's whole-network capture example


@dataclass
class _Outputs:
    """The tensors one step leaves behind: under a graph, its static outputs."""

    loss: Any
    grads: dict
    pre_activations: list
    activations: list
    pre_activation_grads: list
    input_grad: Any


@dataclass
class _Captured:
    """One batch shape: its static input buffers, and its graph's replay and outputs."""

    x: torch.Tensor
    y: torch.Tensor
    replay: Any = None  # None: run the step again (capture=False)
    outputs: _Outputs | None = None


class GraphedStep:
    """One manual training step (forward, backward, optional gradient clipping, optimiser update)
    on static input buffers, captured once in a CUDA graph and replayed.

    ``capture=None`` captures iff the net's parameters are on CUDA; ``capture=False`` runs the
    very same static-buffer step eagerly, without a graph (how the logic is tested on the CPU).
    Calling it with (x, y) returns the loss, a 0-dim (K replicas: (K,)) tensor valid until the
    next call, and leaves this step's ``grads``, ``pre_activations``, ``activations`` and
    ``pre_activation_grads`` on the net; with ``fuse_sgd=True`` (no one reads them), where the update
    can be fused into backward (``fused_step_lr``: plain SGD, nothing clipped), the step is
    ``MLP.sgd_step`` instead and leaves none of them. The first update of a run runs eagerly; then
    each (fused, batch shape) is captured at its first call (a dict of up to MAX_GRAPHS graphs;
    further ones run eagerly). Stacked replicas (a leading K axis, per-replica lrs) are clipped
    each by its own norm, as ``clip_grad_norm(..., replica_ndim=1)``.
    """

    def __init__(self, net: MLP, optimizer: Optimizer, clip_norm: float | None = None,
                 capture: bool | None = None):
        first = next(iter(net.params.values()))
        if not isinstance(first, torch.Tensor):
            raise TypeError("GraphedStep needs the torch backend (the parameters are not tensors)")
        if capture is None:
            capture = first.is_cuda
        if capture and not first.is_cuda:
            raise ValueError(f"capture=True needs the parameters on a CUDA device, not {first.device}")
        self.net, self.optimizer, self.clip_norm, self.capture = net, optimizer, clip_norm, capture
        self.replica_ndim = net.params["W1"].ndim - 2
        self.graphs: dict[tuple, _Captured] = {}
        self._scalars: dict = {}  # the optimiser's step_scalars, as device tensors the graphs read
        self._bound: list = []  # the objects the graphs hold by address

    def __call__(self, x, y, fuse_sgd: bool = False):
        if self.graphs and not self._still_bound():
            self.reset()
        fused = fused_step_lr(self.optimizer, self.clip_norm, keep_grads=not fuse_sgd) is not None
        key = (fused, tuple(x.shape), x.dtype, tuple(y.shape), y.dtype)
        captured = self.graphs.get(key)
        if captured is None:
            if self.optimizer.steps == 0 or len(self.graphs) >= MAX_GRAPHS:
                return self._eager_step(x, y, fused)
            captured = self.graphs[key] = self._capture(x, y, fused)
        captured.x.copy_(x)
        captured.y.copy_(y)
        self._set_scalars()
        if captured.replay is None:
            captured.outputs = self._step(captured.x, captured.y, fused)
        else:
            captured.replay()
            self._put_back(captured.outputs)
        self.optimizer.steps += 1
        return captured.outputs.loss

    def reset(self) -> None:
        """Forget every graph; the next call captures again."""
        self.graphs, self._scalars, self._bound = {}, {}, []

    # -- the step --------------------------------------------------------------------------------

    def _step(self, x, y, fused: bool, scalars: dict | None = None) -> _Outputs:
        """Forward, backward, clipping, and the update with the per-step numbers ``scalars``
        (default: the device tensors ``_scalars``); ``fused``: ``MLP.sgd_step``."""
        net = self.net
        if fused:
            loss = net.sgd_step(x, y, self.optimizer.fused_lr())
        else:
            loss, grads = net.loss_and_grads(x, y)
            if self.clip_norm is not None:
                clip_grad_norm(grads, self.clip_norm, self.replica_ndim)
            self.optimizer.apply(net.params, grads, self._scalars if scalars is None else scalars)
        return _Outputs(loss, net.grads, net.pre_activations, net.activations, net.pre_activation_grads,
                        net.input_grad)

    def _eager_step(self, x, y, fused: bool):
        """The plain eager step, ``Optimizer.step``'s numbers in python: the first update (it
        creates the optimiser's state), or a kind of batch beyond MAX_GRAPHS."""
        self.optimizer.steps += 1
        return self._step(x, y, fused, self.optimizer.step_scalars(self.optimizer.steps)).loss

    def _set_scalars(self) -> None:
        """This step's ``step_scalars``, computed in python as the eager step does, written into the
        device tensors the graph reads (one fill, or for per-replica values one copy, each)."""
        dtype = self.net.params["W1"].dtype
        for name, value in self.optimizer.step_scalars(self.optimizer.steps + 1).items():
            static = self._scalars.get(name)
            if static is None:  # before the first capture
                self._scalars[name] = (value.clone() if isinstance(value, torch.Tensor) else
                                       torch.tensor(value, dtype=dtype, device=self.net.params["W1"].device))
            elif isinstance(value, torch.Tensor):
                static.copy_(value)
            else:
                static.fill_(value)

    def _put_back(self, outputs: _Outputs) -> None:
        """The step's tensors back on the net (an eager forward in between rebinds its lists)."""
        net = self.net
        net.grads, net.input_grad = dict(outputs.grads), outputs.input_grad
        net.pre_activations, net.activations = list(outputs.pre_activations), list(outputs.activations)
        net.pre_activation_grads = list(outputs.pre_activation_grads)

    # -- capture ---------------------------------------------------------------------------------

    def _capture(self, x, y, fused: bool) -> _Captured:
        captured = _Captured(x.clone(memory_format=torch.contiguous_format),
                             y.clone(memory_format=torch.contiguous_format))
        self._set_scalars()
        state = self._state_tensors()
        saved = [t.clone() for t in state]
        step = partial(self._step, captured.x, captured.y, fused)
        if captured.x.is_cuda:
            side = torch.cuda.Stream(device=captured.x.device)
            side.wait_stream(torch.cuda.current_stream(captured.x.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    step()
            torch.cuda.current_stream(captured.x.device).wait_stream(side)
        else:
            for _ in range(WARMUP_STEPS):
                step()
        if self.capture:
            captured.replay, captured.outputs = self._record(step)
        for tensor, value in zip(state, saved, strict=True):  # in place: the graph holds these
            tensor.copy_(value)
        self._bound = self._binding()
        return captured

    def _record(self, step) -> tuple:
        """Capture ``step()`` in a CUDA graph: (replay, the step's outputs, static in the graph)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = step()
        return graph.replay, outputs

    def _state_tensors(self) -> list:
        """What a step changes: the parameters and the optimiser's state."""
        tensors = list(self.net.params.values())
        for state in self.optimizer.state.values():
            tensors += [value for value in state.values() if isinstance(value, torch.Tensor)]
        return tensors

    def _binding(self) -> list:
        objects = [self.net.params, self.optimizer.state, self.optimizer.lr, *self.net.params.values()]
        for state in self.optimizer.state.values():
            objects += [state, *state.values()]
        return objects

    def _still_bound(self) -> bool:
        now = self._binding()
        return len(now) == len(self._bound) and all(map(operator.is_, now, self._bound))
