"""One interface over the two ways to train: the hand-written engine and torch autograd.

Each trainer holds its copy of the data, takes a minibatch by indices, steps it with
``testbed.training.step`` (``manual_step``, ``torch_step``) and after a recorded step exposes the
per-layer tensors the diagnostics read. ``state_dict()``/``load_state_dict()`` give and take back
everything a step depends on (parameters and optimiser state), bit for bit, for checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch

from testbed.engine import MLP, Backend, MLPSpec, get_optimizer
from testbed.engine.backend import to_numpy
from testbed.engine.cuda_graph import GraphedStep
from testbed.reference.model import (
    build_torch_loss,
    build_torch_mlp,
    build_torch_optimizer,
    torch_dtype,
    torch_named_params,
)
from testbed.training.state import load_in_place, to_tensors
from testbed.training.step import manual_step, torch_step


def accuracy(output: np.ndarray, target: np.ndarray, loss: str) -> float | None:
    """Classification accuracy (argmax), binary accuracy (logit > 0), or None for regression."""
    if loss == "cross_entropy":
        return float(np.mean(output.argmax(axis=-1) == target))
    if loss == "bce_with_logits":
        return float(np.mean((output > 0) == (target > 0.5)))
    return None


class Trainer:
    spec: MLPSpec
    record: dict  # after a recorded step: pre_activations, activations, weight_grads, ...

    def load_data(self, x_train, y_train, x_test, y_test) -> None:
        self.data = {"train": (self._inputs(x_train), self._targets(y_train)),
                     "test": (self._inputs(x_test), self._targets(y_test))}

    def evaluate(self, split: str, chunk: int = 4096) -> tuple[float, float | None]:
        """(mean loss, accuracy) over a whole split, in chunks; no gradients."""
        x, y = self.data[split]
        n = x.shape[0]
        total, outputs = 0.0, []
        for start in range(0, n, chunk):
            out, loss = self._forward_loss(x[start:start + chunk], y[start:start + chunk])
            total += loss * min(chunk, n - start)
            outputs.append(to_numpy(out))
        output = np.concatenate(outputs)
        return total / n, accuracy(output, to_numpy(y), self.spec.loss)

    def params_numpy(self) -> dict[str, np.ndarray]:
        return {k: to_numpy(v).copy() for k, v in self.named_params().items()}


class ManualTrainer(Trainer):
    """The hand-written engine on ``backend`` (numpy or torch arrays, autograd off).

    ``cuda_graph``: the training steps replay a CUDA graph (``testbed.engine.cuda_graph``; the torch
    backend on a CUDA device); the step that only records (``update=False``) runs eagerly.
    ``fuse_sgd``: a step that neither records nor clips, with plain SGD, fuses the update into
    backward (``MLP.sgd_step``; under ``cuda_graph``, a graph of its own) and keeps no gradients;
    off where each step's gradients are read (``engine=both`` compares them with torch's).
    """

    def __init__(self, spec: MLPSpec, initial: dict, backend: Backend, optimizer: str, hyper: dict,
                 clip_norm: float | None = None, cuda_graph: bool = False, fuse_sgd: bool = True):
        self.spec, self.backend, self.clip_norm, self.fuse_sgd = spec, backend, clip_norm, fuse_sgd
        self.net = MLP(spec, {k: backend.asarray(v) for k, v in initial.items()})
        self.optimizer = get_optimizer(optimizer, **hyper)
        self.record: dict = {}
        self.grads: dict = {}
        self.grad_norm = None
        self.graphed = None
        if cuda_graph:
            if backend.name != "torch" or not str(backend.device).startswith("cuda"):
                raise ValueError(f"cuda_graph=True needs the torch backend on a CUDA device; the engine "
                                 f"runs on {backend.name} arrays on device {backend.device!r}")
            self.graphed = GraphedStep(self.net, self.optimizer, clip_norm)

    def _inputs(self, x):
        return self.backend.asarray(x)

    def _targets(self, y):
        return self.backend.labels(y) if self.spec.loss == "cross_entropy" else self.backend.asarray(y)

    def _index(self, idx):
        return torch.as_tensor(idx, device=self.backend.device) if self.backend.name == "torch" else idx

    def named_params(self) -> dict:
        return self.net.params

    def state_dict(self) -> dict:
        """Parameters, and the optimiser's per-parameter state and step count, as CPU tensors."""
        return {"params": to_tensors(self.net.params),
                "optimizer": {"state": to_tensors(self.optimizer.state), "steps": self.optimizer.steps}}

    def _to_backend(self, t: torch.Tensor):
        """A checkpoint's CPU tensor as this backend's array: a copy, sharing no memory with it."""
        return t.numpy().copy() if self.backend.name == "numpy" else t.to(self.backend.device, copy=True)

    def load_state_dict(self, state: dict) -> None:
        """In place: parameters and optimiser state tensors keep their memory, so that whoever holds
        them (a captured CUDA graph) sees the loaded values."""
        for key, param in self.net.params.items():
            value = state["params"][key]
            if self.backend.name == "numpy":
                param[...] = value.numpy()
            else:
                param.copy_(value)
        load_in_place(self.optimizer.state, state["optimizer"]["state"], self._to_backend)
        self.optimizer.steps = state["optimizer"]["steps"]

    def step(self, idx: np.ndarray, update: bool = True, record: bool = False) -> float:
        return float(self._train_step(idx, update, record))

    def minibatch(self, idx: np.ndarray) -> tuple:
        """The training split's rows ``idx``: (x, y) as this backend's arrays."""
        x, y = self.data["train"]
        i = self._index(idx)
        return x[i], y[i]

    def _train_step(self, idx: np.ndarray, update: bool, record: bool):
        """``manual_step`` on the minibatch ``idx``; keeps its gradients (``grads``), their norm
        before clipping (``grad_norm``; None where no gradients are formed) and, with ``record``,
        its per-layer tensors (``record``); returns the loss array."""
        self.grads = {}  # the last step's: freed before this step's exist
        result = manual_step(self.net, self.optimizer, *self.minibatch(idx), clip_norm=self.clip_norm,
                             update=update, record=record, fuse_sgd=self.fuse_sgd, graphed=self.graphed)
        self.grads, self.grad_norm = self.net.grads, result.grad_norm
        if record:
            self.record = result.record
        return result.loss

    def _forward_loss(self, x, y):
        output = self.net.forward(x, record=False)  # no s^l kept: the diagnostics read a step's, not this
        return output, float(self.net.loss_fn.forward(output, y)[0])


class TorchTrainer(Trainer):
    """The torch.nn / torch.optim reference; hooks keep s^l, a^l and dL/ds^l when recording."""

    def __init__(self, spec: MLPSpec, initial: dict, device: str, dtype: str, optimizer: str,
                 hyper: dict, clip_norm: float | None = None):
        self.spec, self.device, self.clip_norm = spec, device, clip_norm
        self.dtype = torch_dtype(dtype)
        self.model = build_torch_mlp(spec, initial, device=device, dtype=dtype)
        self.params = torch_named_params(self.model)
        self.loss_fn = build_torch_loss(spec.loss)
        self.optimizer = build_torch_optimizer(optimizer, self.model.parameters(), **hyper)
        self.record: dict = {}

    def _inputs(self, x):
        return torch.as_tensor(np.asarray(x)).to(self.device, self.dtype)

    def _targets(self, y):
        y = torch.as_tensor(np.asarray(y)).to(self.device)
        return y.long() if self.spec.loss == "cross_entropy" else y.to(self.dtype)

    def named_params(self) -> dict:
        return {k: v.detach() for k, v in self.params.items()}

    def state_dict(self) -> dict:
        return {"model": to_tensors(dict(self.model.state_dict())),
                "optimizer": to_tensors(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])  # copies into the existing parameters
        self.optimizer.load_state_dict(state["optimizer"])  # moves its state to their device

    def step(self, idx: np.ndarray, update: bool = True, record: bool = False) -> float:
        """``torch_step`` on the minibatch ``idx``; with ``record``, keeps its per-layer tensors."""
        x, y = self.data["train"]
        i = torch.as_tensor(idx, device=self.device)
        result = torch_step(self.model, self.optimizer, self.loss_fn, x[i], y[i], clip_norm=self.clip_norm,
                            update=update, record=record)
        if record:
            self.record = result.record
        return result.loss.item()

    @property
    def grads(self) -> dict:
        return {k: v.grad for k, v in self.params.items()}

    @torch.no_grad()
    def _forward_loss(self, x, y):
        output = self.model(x)
        return output, self.loss_fn(output, y).item()
