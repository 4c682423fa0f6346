"""The same network as the engine's, built from the same spec with torch.nn and torch.optim."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from testbed.engine.network import MLPSpec

TORCH_ACTIVATIONS = {
    "identity": lambda: nn.Identity(),
    "sigmoid": lambda: nn.Sigmoid(),
    "tanh": lambda: nn.Tanh(),
    "relu": lambda: nn.ReLU(),
    "leaky_relu": lambda slope=0.01: nn.LeakyReLU(slope),
    "elu": lambda alpha=1.0: nn.ELU(alpha),
    "selu": lambda: nn.SELU(),
    "gelu": lambda approximate="none": nn.GELU(approximate=approximate),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": lambda: nn.SiLU(),
    "softplus": lambda beta=1.0, threshold=20.0: nn.Softplus(beta, threshold),
    "softsign": lambda: nn.Softsign(),
}


class LogisticSumSquaredError(nn.Module):
    """The PDP error measure on logits: 1/2 sum of (y - sigmoid(z))^2 (per replica with leading axes)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((torch.sigmoid(logits) - target) ** 2).sum(dim=(-2, -1))


TORCH_LOSSES = {"mse": nn.MSELoss, "cross_entropy": nn.CrossEntropyLoss,
                "bce_with_logits": nn.BCEWithLogitsLoss,
                "logistic_sum_squared_error": LogisticSumSquaredError}

TORCH_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                    "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}


def torch_dtype(dtype: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[dtype]


def build_torch_mlp(spec: MLPSpec, params: dict[str, np.ndarray], device: str = "cpu",
                    dtype: str = "float64") -> nn.Sequential:
    """An nn.Sequential of Linear and activation modules holding exactly ``params``."""
    layers: list[nn.Module] = []
    sizes = spec.layer_sizes
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
        # created in the target dtype: a float32 detour would round float64 weights
        linear = nn.Linear(fan_in, fan_out, device=device, dtype=torch_dtype(dtype))
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(np.asarray(params[f"W{layer}"])))
            linear.bias.copy_(torch.as_tensor(np.asarray(params[f"b{layer}"])))
        layers.append(linear)
        if layer < spec.num_layers:
            layers.append(TORCH_ACTIVATIONS[spec.activation](**spec.activation_params))
    return nn.Sequential(*layers)


def torch_named_params(model: nn.Sequential) -> dict[str, torch.Tensor]:
    """The model's parameters under the engine's names {W1, b1, ...}."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    named = {}
    for layer, linear in enumerate(linears, start=1):
        named[f"W{layer}"], named[f"b{layer}"] = linear.weight, linear.bias
    return named


def build_torch_loss(name: str) -> nn.Module:
    return TORCH_LOSSES[name]()


def build_torch_optimizer(name: str, params, **hyper) -> torch.optim.Optimizer:
    """torch.optim's optimiser of the engine's name, with the same hyperparameters.
    ``foreach=False`` picks the single-tensor update the engine mirrors.
    """
    return TORCH_OPTIMIZERS[name](params, foreach=False, **hyper)
