"""The multilayer perceptron: forward, backward, and what diagnostics read.

Layers are numbered l = 1..L, L = depth + 1, layer 1 next to the input:

    s^l = a^{l-1} W^l^T + b^l,   a^l = phi(s^l) (l < L),   output = s^L,

with a^0 = x. Backward runs the chain rule from dL/ds^L down to dL/dx and
keeps every dL/ds^l (the quantity whose growth or decay *is* the vanishing
or exploding gradient; Glorot & Bengio 2010, eq. 14) and dL/dx; a pass with
``record=False`` (a training step that logs nothing) keeps only the gradients,
and ``sgd_step`` not even those: plain SGD's update is fused into backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from testbed.engine.activations import get_activation
from testbed.engine.backend import Backend, namespace
from testbed.engine.init import init_bias, init_weight
from testbed.engine.layers import linear_backward, linear_backward_sgd, linear_forward
from testbed.engine.losses import get_loss


@dataclass
class MLPSpec:
    """Everything that defines a network, shared by the engine and the torch reference."""

    in_features: int
    out_features: int
    depth: int = 2  # hidden layers; depth 0 is a linear model
    width: int = 64
    activation: str = "tanh"
    activation_params: dict = field(default_factory=dict)
    init: str = "xavier_uniform"
    init_scale: float = 1.0
    init_params: dict = field(default_factory=dict)
    bias_init: str = "zeros"
    bias_std: float = 0.0
    loss: str = "cross_entropy"

    def __post_init__(self) -> None:
        for key in ("in_features", "out_features", "width"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0 (0 is a linear model), got {self.depth}")

    @property
    def layer_sizes(self) -> list[int]:
        return [self.in_features] + [self.width] * self.depth + [self.out_features]

    @property
    def num_layers(self) -> int:
        return self.depth + 1

    def param_keys(self) -> list[str]:
        return [f"{kind}{layer}" for layer in range(1, self.num_layers + 1) for kind in "Wb"]


def init_params(spec: MLPSpec, seed: int) -> dict[str, np.ndarray]:
    """Initial parameters as float64 numpy arrays {W1, b1, ..., WL, bL}; W^l is (fan_out, fan_in)."""
    rng = np.random.default_rng(seed)
    sizes = spec.layer_sizes
    params = {}
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
        params[f"W{layer}"] = init_weight(spec.init, rng, fan_out, fan_in, spec.init_scale,
                                          **spec.init_params)
        params[f"b{layer}"] = init_bias(spec.bias_init, rng, fan_out, fan_in, spec.bias_std)
    return params


def init_replica_params(spec: MLPSpec, seeds: list[int], inits: list[str] | None = None,
                        init_scales: list[float] | None = None) -> dict[str, np.ndarray]:
    """K replicas' initial parameters stacked on a leading axis: W^l (K, fan_out, fan_in).

    Replica k is exactly ``init_params`` of the spec with seed k, init k and scale k, so a
    replica trained in the stack equals the same configuration trained alone.
    """
    inits = inits or [spec.init] * len(seeds)
    init_scales = init_scales or [spec.init_scale] * len(seeds)
    if not len(seeds) == len(inits) == len(init_scales):
        raise ValueError(f"replica lists differ in length: {len(seeds)} seeds, {len(inits)} inits, "
                         f"{len(init_scales)} init scales")
    stacked: dict[str, np.ndarray] = {}
    for k, (seed, init, scale) in enumerate(zip(seeds, inits, init_scales, strict=True)):
        params = init_params(replace(spec, init=init, init_scale=scale), seed)
        for key, value in params.items():  # filled one replica at a time: no second copy of the stack
            stacked.setdefault(key, np.empty((len(seeds),) + value.shape, value.dtype))[k] = value
    return stacked


class MLP:
    """A hand-written MLP. ``params`` and ``grads`` are dicts with the same keys (cs231n).

    With parameters stacked on a leading axis (``init_replica_params``) and inputs of shape
    (K, N, in_features), the same code trains K independent replicas in batched matmuls.
    """

    def __init__(self, spec: MLPSpec, params: dict):
        self.spec = spec
        self.params = params
        self.activation = get_activation(spec.activation, **spec.activation_params)
        self.loss_fn = get_loss(spec.loss)
        self.grads: dict = {}
        self.pre_activations: list = []       # s^1..s^L from the last forward
        self.activations: list = []           # a^1..a^{L-1}
        self.pre_activation_grads: list = []  # dL/ds^1..dL/ds^L from the last backward
        self.input_grad = None                # dL/dx
        self._caches: list = []
        self._layer_keys = [(f"W{layer}", f"b{layer}") for layer in range(1, spec.num_layers + 1)]

    @classmethod
    def create(cls, spec: MLPSpec, seed: int = 0, backend: Backend | None = None) -> MLP:
        backend = backend or Backend()
        params = {k: backend.asarray(v) for k, v in init_params(spec, seed).items()}
        return cls(spec, params)

    def forward(self, x, record: bool = True):
        """x (..., N, in_features) -> output (..., N, out_features); keeps the caches, and with
        ``record`` every s^l in ``pre_activations``."""
        self._caches, self.pre_activations, self.activations = [], [], []
        a = x
        for weight_key, bias_key in self._layer_keys[:-1]:
            s, linear_cache = linear_forward(a, self.params[weight_key], self.params[bias_key])
            a, activation_cache = self.activation.forward(s)
            if record:
                self.pre_activations.append(s)
            self.activations.append(a)
            self._caches.append((linear_cache, activation_cache))
        weight_key, bias_key = self._layer_keys[-1]
        output, linear_cache = linear_forward(a, self.params[weight_key], self.params[bias_key])
        if record:
            self.pre_activations.append(output)
        self._caches.append((linear_cache, None))
        return output

    def backward(self, grad_output, input_grad: bool = False, record: bool = True,
                 sgd_lr: float | None = None):
        """From dL/d(output), fill ``grads`` and, with ``record``, ``pre_activation_grads``; return
        dL/dx if asked. Without ``record`` the net keeps nothing of the pass but ``grads``.

        ``sgd_lr``: apply plain SGD's update, w <- w - sgd_lr dL/dw, during the pass instead, each
        weight's fused into its gradient's matrix product (``linear_backward_sgd``); ``grads`` stays
        empty (``sgd_step``)."""
        self.grads, self.pre_activation_grads = {}, []  # the last pass's: freed before this one's exist
        grads, pre_activation_grads = {}, []
        da = None  # dL/da^l, the gradient arriving at layer l's output
        num_layers = self.spec.num_layers
        for layer in range(num_layers, 0, -1):
            linear_cache, activation_cache = self._caches[layer - 1]
            if layer == num_layers:
                ds = grad_output  # dL/ds^L
            else:
                ds = self.activation.backward(da, activation_cache)  # dL/ds^l from dL/da^l
            if record:
                pre_activation_grads.append(ds)
            weight_key, bias_key = self._layer_keys[layer - 1]
            need_input_grad = layer > 1 or input_grad  # dL/dx only when asked for
            if sgd_lr is None:
                da, grads[weight_key], grads[bias_key] = linear_backward(ds, linear_cache, need_input_grad)
            else:  # W^l already updated; its bias's after the loop, all in one call
                da, grads[bias_key] = linear_backward_sgd(ds, linear_cache, sgd_lr, need_input_grad)
        self.pre_activation_grads = pre_activation_grads[::-1]
        self.input_grad = da
        if sgd_lr is None:
            self.grads = {key: grads[key] for keys in self._layer_keys for key in keys}
        else:
            biases = [self.params[bias_key] for _, bias_key in self._layer_keys]
            namespace(biases[0]).sub_scaled_all_(biases, sgd_lr, [grads[b] for _, b in self._layer_keys])
        if not record:
            self._caches, self.activations = [], []
        return da

    def loss_and_grads(self, x, target, input_grad: bool = False, record: bool = True):
        """One forward and backward pass: returns (loss, grads).

        ``record``: keep every s^l, a^l and dL/ds^l of the pass (what the diagnostics read). A
        training step that logs nothing passes False: each is freed as soon as the pass is done
        with it, as autograd frees them (depth 20, width 1024, batch 512, float64 on CPU: the
        step's peak memory above what was resident before it, 340 MB kept, 121 MB not; autograd's
        181 MB). The gradients and the loss are the same, bitwise.
        """
        output = self.forward(x, record)
        loss, loss_cache = self.loss_fn.forward(output, target)
        self.backward(self.loss_fn.backward(loss_cache), input_grad=input_grad, record=record)
        return loss, self.grads

    def sgd_step(self, x, target, lr):
        """One step of plain SGD, w <- w - lr dL/dw, with each weight's update fused into the
        matrix product of its gradient: W^l -= lr dL/ds^l^T a^{l-1} is one GEMM accumulating into
        W^l, so no dL/dW is formed (which saves its allocation and a pass over every weight; no
        autograd step can do this, as its optimiser reads the finished .grad). Keeps nothing of the
        pass (``record=False``); returns the loss.

        ``lr``: a number, or a stack's K per-replica learning rates, shape (K,). Those scale
        dL/d(output) once: backward is linear in it, so every dL/ds^l below carries its replica's lr
        and the GEMMs need no other factor. With a number the weights equal ``loss_and_grads`` then
        ``SGD.step`` to rounding on torch (the GEMM adds lr x product in its own order), exactly on
        numpy, and the biases exactly; per-replica rates, to rounding."""
        output = self.forward(x, record=False)
        loss, loss_cache = self.loss_fn.forward(output, target)
        grad_output = self.loss_fn.backward(loss_cache)
        if not isinstance(lr, int | float):  # in place: the loss's gradient is fresh, and keeps its dtype
            grad_output *= lr[..., None, None]
            lr = 1.0
        self.backward(grad_output, record=False, sgd_lr=lr)
        return loss

    def loss(self, x, target):
        """The loss alone (no backward)."""
        return self.loss_fn.forward(self.forward(x, record=False), target)[0]
