"""One training step, for each of the two ways to train: the hand-written engine and torch autograd.

A step is forward, loss, backward, gradient clipping (``clip_norm``: the global norm, as
``torch.nn.utils.clip_grad_norm_``) and the optimiser's update; ``update=False`` stops before
the update (the loop's last step, which only records). ``record=True`` also returns the per-layer
tensors the diagnostics read (the arguments of ``testbed.diagnostics.layer_metrics``:
``pre_activations``, ``activations``, ``weight_grads``, ``pre_activation_grads``, ``weights`` and
``updates``, each weight's change by the step, None without an update). Each side leaves its
gradients where its framework keeps them: the engine on ``net.grads``, torch on every parameter's
``.grad``.

``manual_step`` and ``torch_step`` are the only steps: the trainers (``testbed.training``), the
lockstep comparison (``testbed.reference.lockstep``) and ``scripts/bench.py`` call them. The
app's batched torch reference takes its gradients from ``torch.func.vmap`` instead of backward,
and clips and updates each replica with ``torch_clip_and_update``, the tail of ``torch_step``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from testbed.engine import MLP, clip_grad_norm, fused_step_lr
from testbed.engine.cuda_graph import GraphedStep
from testbed.engine.optim import Optimizer


class StepResult(NamedTuple):
    loss: Any  # as the side computed it: the engine's array (a stack's: K losses), torch's 0-dim tensor
    record: dict | None = None  # with record=True: the per-layer tensors, each a list over layers
    grad_norm: Any = None  # with clip_norm: the global gradient norm before clipping (a stack: K norms),
    #                        as the clipping measured it; None where a CUDA graph replayed the step


def manual_step(net: MLP, optimizer: Optimizer, x, y, *, clip_norm: float | None = None,
                update: bool = True, record: bool = False, fuse_sgd: bool = False,
                graphed: GraphedStep | None = None) -> StepResult:
    """One step of the hand-written engine on the minibatch (x, y).

    Stacked replicas (parameters with a leading K axis) are clipped each by its own norm.
    ``fuse_sgd``: no one reads this step's gradients, so where ``fused_step_lr`` allows (plain SGD,
    nothing clipped, a step that updates and records nothing) the update is fused into backward
    (``MLP.sgd_step``) and ``net.grads`` is left empty. ``graphed``: a ``GraphedStep`` over this
    net, optimiser and clip norm, which replays the updating steps as a CUDA graph (it applies
    ``fused_step_lr`` itself); a step without an update runs eagerly.
    """
    layers = range(1, net.spec.num_layers + 1)
    before = [net.params[f"W{layer}"] * 1 for layer in layers] if (record and update) else None
    keep_grads = record or not fuse_sgd
    grad_norm = None
    if graphed is not None and update:  # forward, backward, clipping and update in one replay
        loss = graphed(x, y, fuse_sgd=not keep_grads)
    elif (lr := fused_step_lr(optimizer, clip_norm, update, keep_grads)) is not None:
        loss = net.sgd_step(x, y, lr)  # forward, and backward with the update fused in: no gradients
        optimizer.count_step()
    else:
        loss, grads = net.loss_and_grads(x, y, record=record)
        if clip_norm is not None:
            grad_norm = clip_grad_norm(grads, clip_norm, replica_ndim=net.params["W1"].ndim - 2)
        if update:
            optimizer.step(net.params, grads)
    if not record:
        return StepResult(loss, None, grad_norm)
    weights = [net.params[f"W{layer}"] for layer in layers]
    return StepResult(loss, dict(
        pre_activations=net.pre_activations, activations=net.activations,
        weight_grads=[net.grads[f"W{layer}"] for layer in layers],
        pre_activation_grads=net.pre_activation_grads, weights=weights,
        updates=[w - b for w, b in zip(weights, before, strict=True)] if before else None), grad_norm)


def torch_step(model: torch.nn.Sequential, optimizer: torch.optim.Optimizer, loss_fn, x, y, *,
               clip_norm: float | None = None, update: bool = True, record: bool = False) -> StepResult:
    """One step of torch.nn / torch.optim (``testbed.reference.model``'s builds) on (x, y); with
    ``record``, hooks keep every s^l, a^l and dL/ds^l."""
    optimizer.zero_grad(set_to_none=True)
    if record:
        output, pre_activations, activations, weights = _forward_recording(model, x)
    else:
        output = model(x)
    loss = loss_fn(output, y)
    loss.backward()
    before = [w.detach().clone() for w in weights] if (record and update) else None
    grad_norm = torch_clip_and_update(model, optimizer, clip_norm, update)
    if not record:
        return StepResult(loss, None, grad_norm)
    return StepResult(loss, dict(
        pre_activations=[s.detach() for s in pre_activations],
        activations=[a.detach() for a in activations],
        weight_grads=[w.grad for w in weights],
        pre_activation_grads=[s.grad for s in pre_activations],
        weights=[w.detach() for w in weights],
        updates=[w.detach() - b for w, b in zip(weights, before, strict=True)] if before else None),
        grad_norm)


def torch_clip_and_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                          clip_norm: float | None = None, update: bool = True):
    """The end of a torch step, once every ``.grad`` is in place: clipping, then the update.
    Returns the global gradient norm before clipping (None without ``clip_norm``)."""
    grad_norm = None
    if clip_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    if update:
        optimizer.step()
    return grad_norm


def _forward_recording(model: torch.nn.Sequential, x) -> tuple:
    """The output, every s^l (kept with its gradient) and a^l, and the layers' weights."""
    pre_activations, activations, weights = [], [], []
    a = x
    for module in model:
        a = module(a)
        if isinstance(module, torch.nn.Linear):
            a.retain_grad()
            pre_activations.append(a)
            weights.append(module.weight)
        else:
            activations.append(a)
    return a, pre_activations, activations, weights
