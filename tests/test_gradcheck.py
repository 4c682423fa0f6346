"""torch.autograd.gradcheck on the engine's hand-written backward passes.

Each engine op is wrapped in a ``torch.autograd.Function`` whose forward calls the engine's
forward (torch backend, on detached tensors: autograd sees nothing inside) and whose backward
calls the engine's backward; gradcheck then compares that backward with its own numerical
Jacobian, entry by entry. float64 (gradcheck is documented for double precision only), inputs kept
1e-2 away from kinks, tolerances by keyword: eps = 1e-6 (gradcheck's perturbation), and
|analytic - numeric| <= atol + rtol |numeric| with atol = 1e-8, rtol = 1e-6 (the numerical
Jacobian's rounding error is ~ u |f| / eps ~ 1e-10 for the O(1) values here). The whole MLP
(input and every parameter) gets the same treatment.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    KINK_MARGIN,
    OPS,
    Backend,
    LinearOp,
    backend_params,
    draw_inputs,
    network_data,
    reference_tensor,
)

from testbed.engine import ACTIVATIONS, LOSSES, MLP, MLPSpec, init_params

GRADCHECK_TOLERANCES = dict(eps=1e-6, atol=1e-8, rtol=1e-6)
FLOAT64_BACKENDS = backend_params(names=("torch",), dtypes=("float64",))


def engine_function(op, name: str) -> type[torch.autograd.Function]:
    """A torch.autograd.Function running the engine op's forward and hand-written backward.

    The engine op's backward returns gradients for its leading differentiable inputs; the rest
    (targets, labels) get None.
    """

    def forward(ctx, *inputs):
        output, cache = op.forward(*(t.detach() for t in inputs))
        ctx.cache, ctx.num_inputs = cache, len(inputs)
        return output

    def backward(ctx, grad_output):
        grads = tuple(op.backward(grad_output, ctx.cache))
        return grads + (None,) * (ctx.num_inputs - len(grads))

    return type(f"Engine_{name}", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})


def gradcheck_inputs(case, backend: Backend, seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    low, high = case.typical
    arrays = draw_inputs(case.shapes, rng, low, high, case.kinks, kink_margin=KINK_MARGIN)
    inputs = [reference_tensor(a, backend, requires_grad=True) for a in arrays]
    if case.target is not None:
        inputs.append(reference_tensor(case.target(rng, arrays[0]), backend))
    return inputs


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
@pytest.mark.parametrize("case", OPS, ids=[case.name for case in OPS])
def test_op_passes_gradcheck(case, backend):
    function = engine_function(case.op, case.name)
    inputs = gradcheck_inputs(case, backend)
    assert torch.autograd.gradcheck(function.apply, inputs, **GRADCHECK_TOLERANCES)


class EngineMLPLoss(torch.autograd.Function):
    """The engine's MLP loss as a function of (x, W1, b1, ..., WL, bL); backward by the engine."""

    @staticmethod
    def forward(ctx, spec, target, x, *params):
        mlp = MLP(spec, {k: p.detach() for k, p in zip(spec.param_keys(), params, strict=True)})
        loss, _ = mlp.loss_and_grads(x.detach(), target, input_grad=True)
        ctx.grads = [mlp.input_grad] + [mlp.grads[k] for k in spec.param_keys()]
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        return (None, None, *(grad_loss * g for g in ctx.grads))


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("activation", ["tanh", "gelu", "softplus", "selu", "sigmoid"])
def test_mlp_passes_gradcheck(activation, loss, backend):
    spec = MLPSpec(in_features=3, out_features=2, depth=2, width=4, activation=activation,
                   init="xavier_normal", bias_init="standard", loss=loss)
    rng = np.random.default_rng(1)
    x, target = network_data(spec, rng, batch=3)
    params = [reference_tensor(p, backend, requires_grad=True) for p in init_params(spec, 0).values()]
    inputs = [reference_tensor(x, backend, requires_grad=True), *params]
    target = reference_tensor(target, backend)
    assert torch.autograd.gradcheck(lambda *xs: EngineMLPLoss.apply(spec, target, *xs), inputs,
                                    **GRADCHECK_TOLERANCES)


def test_every_activation_is_gradchecked():
    names = {case.name for case in OPS}
    assert set(ACTIVATIONS) <= names


def test_gradcheck_fails_a_wrong_backward():
    """With these tolerances gradcheck rejects a weight gradient that is 1e-4 off."""

    class ScaledLinear(LinearOp):
        def backward(self, grad_output, cache):
            dx, dw, db = super().backward(grad_output, cache)
            return dx, dw * (1 + 1e-4), db

    case = next(case for case in OPS if case.name == "linear")
    function = engine_function(ScaledLinear(), "wrong_linear")
    inputs = gradcheck_inputs(case, Backend("torch", "float64"))
    assert not torch.autograd.gradcheck(function.apply, inputs, raise_exception=False,
                                        **GRADCHECK_TOLERANCES)
