"""Train the engine and the torch reference side by side, step for step.

Both start from the same initial parameters and see the same minibatches, and each takes the
training step every trainer takes (``testbed.training.step``: ``manual_step``, ``torch_step``);
after every step the discrepancy is measured: loss difference, relative gradient error and
relative parameter drift per parameter, and on request the gradients' difference in units of the
bound rounding puts on it (``testbed.reference.discrepancy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from testbed.engine import MLP, Backend, MLPSpec, fused_step_lr, get_optimizer, init_params
from testbed.engine.backend import to_numpy
from testbed.reference.discrepancy import bound_ratio, gradient_error_bounds
from testbed.reference.model import (
    build_torch_loss,
    build_torch_mlp,
    build_torch_optimizer,
    torch_named_params,
)
from testbed.training.step import manual_step, torch_step

TINY = 1e-30


def relative_error(a, b) -> float:
    """||a - b|| / max(||b||, tiny), computed in float64."""
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), TINY))


@dataclass
class StepComparison:
    loss_manual: float
    loss_torch: float
    grad_rel_err: dict[str, float]
    param_rel_err: dict[str, float]
    grad_err_bound_ratio: float = math.nan  # asked for with bound=True (testbed.reference.discrepancy)

    @property
    def loss_abs_diff(self) -> float:
        return abs(self.loss_manual - self.loss_torch)

    @property
    def grad_max_rel_err(self) -> float:
        return max(self.grad_rel_err.values(), default=math.nan)  # nan: a fused step, no gradients

    @property
    def param_max_rel_err(self) -> float:
        return max(self.param_rel_err.values())


class Lockstep:
    """The engine (on ``backend``) and torch (same device and dtype) trained in lockstep."""

    def __init__(self, spec: MLPSpec, seed: int, backend: Backend, optimizer: str = "sgd",
                 clip_norm: float | None = None, **hyper):
        self.spec, self.backend, self.clip_norm = spec, backend, clip_norm
        initial = init_params(spec, seed)
        self.manual = MLP(spec, {k: backend.asarray(v) for k, v in initial.items()})
        self.manual_optimizer = get_optimizer(optimizer, **hyper)
        device = backend.device if backend.name == "torch" else "cpu"
        self.torch_model = build_torch_mlp(spec, initial, device=device, dtype=backend.dtype)
        self.torch_params = torch_named_params(self.torch_model)
        self.torch_loss = build_torch_loss(spec.loss)
        # torch gets the engine's resolved lr: with lr omitted, each would fall back to its own
        # default, and those differ (torch.optim.SGD 1e-3, the engine's SGD 1e-2)
        self.torch_optimizer = build_torch_optimizer(optimizer, self.torch_model.parameters(),
                                                     **{"lr": self.manual_optimizer.lr, **hyper})
        self.device = device

    def _torch_inputs(self, x, y):
        dtype = self.torch_model[0].weight.dtype
        x = torch.as_tensor(to_numpy(x)).to(self.device, dtype)
        y = torch.as_tensor(to_numpy(y)).to(self.device)
        return x, (y.long() if self.spec.loss == "cross_entropy" else y.to(dtype))

    def step(self, x: np.ndarray, y: np.ndarray, fused: bool = False, bound: bool = False) -> StepComparison:
        """One optimiser step of both on the minibatch (x, y); returns the discrepancy.

        ``fused``: the engine steps with ``MLP.sgd_step`` (plain SGD's update fused into backward,
        as the app's steps that log nothing), which forms no gradients: only the loss and the
        parameters are compared (``grad_rel_err`` is empty). ``bound``: also the gradients'
        difference in units of their rounding-error bound (``grad_err_bound_ratio``)."""
        xm = self.backend.asarray(x)
        ym = self.backend.labels(y) if self.spec.loss == "cross_entropy" else self.backend.asarray(y)
        if fused and fused_step_lr(self.manual_optimizer, self.clip_norm) is None:
            raise ValueError("a fused step needs plain SGD (no momentum or weight decay), no clipping")
        bounds = gradient_error_bounds(self.spec, self.manual.params, xm, ym) if bound and not fused else None
        manual = manual_step(self.manual, self.manual_optimizer, xm, ym, clip_norm=self.clip_norm,
                             fuse_sgd=fused)
        loss_manual = manual.loss
        xt, yt = self._torch_inputs(x, y)
        loss_torch = torch_step(self.torch_model, self.torch_optimizer, self.torch_loss, xt, yt,
                                clip_norm=self.clip_norm).loss
        # neither optimiser changes the gradients it reads: these are the step's, clipped
        grads, torch_grads = self.manual.grads, {k: p.grad for k, p in self.torch_params.items()}
        grad_err = {} if fused else {k: relative_error(grads[k], torch_grads[k]) for k in torch_grads}
        param_err = {k: relative_error(self.manual.params[k], p) for k, p in self.torch_params.items()}
        ratio = (math.nan if bounds is None
                 else bound_ratio(grads, torch_grads, bounds, self.clip_norm, manual.grad_norm))
        return StepComparison(float(loss_manual), loss_torch.item(), grad_err, param_err, ratio)
