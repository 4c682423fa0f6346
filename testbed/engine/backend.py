"""One code path for numpy and torch arrays.

Every engine op starts with ``xp = namespace(x)`` and uses only the functions
of that namespace plus the operators both libraries share (``+ - * / @``,
``.mT``, ``.shape``, in-place ``-= *= /=``). Why a small layer of our own and
not the Array API (array-api-compat): the engine needs ``erf``, a stable
``sigmoid`` and ``log_softmax``, which the standard lacks; the torch side maps
straight onto torch's own kernels (``addmm``/``baddbmm`` for a linear layer,
as autograd's ``F.linear`` does) with no wrapper in the hot path; and the
whole surface the engine touches is listed here, in one screen, for a reader
to check.

Four in-place helpers exist for speed on torch, where every op costs a few
microseconds of dispatch whatever its size: ``sub_scaled_(p, lr, x)`` is
``p -= lr * x`` in one fused kernel (as torch.optim.SGD), ``sub_scaled_all_``
the same over lists in one multi-tensor launch (torch.optim's foreach),
``sub_matmul_(c, lr, a, b)`` is ``c -= lr * (a @ b)`` as one matrix product
accumulated into c (SGD's weight update fused into its gradient's product),
and ``add_at_label_(x, labels, v)`` adds v at each row's label (cross-entropy's
``- onehot(y)`` without building the one-hot matrix).

Torch tensors are used with autograd off: nothing the engine computes
requires grad (tests/test_boundary.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import scipy.special
import torch

Array = Any  # np.ndarray or torch.Tensor

DTYPES = ("float32", "float64")
EXTENDED = "longdouble"  # numpy only: x87 80-bit on x86-64 (u = 2^-64), the oracle of the tests
BACKENDS = ("numpy", "torch")


def _np_linear(x, weight, bias):
    return x @ weight.mT + bias[..., None, :] if x.ndim > 2 else x @ weight.T + bias


def _torch_linear(x, weight, bias):
    if x.dim() == 2:
        return torch.addmm(bias, x, weight.t())
    return torch.baddbmm(bias.unsqueeze(-2), x, weight.mT)


def _np_log_softmax(x):
    shifted = x - np.max(x, axis=-1, keepdims=True)  # the stable log-sum-exp
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _np_sub_scaled_(param, lr, x):
    param -= lr * x


def _np_sub_scaled_all_(params, lr, xs):
    lrs = lr if isinstance(lr, list) else [lr] * len(params)
    for param, lr_, x in zip(params, lrs, xs, strict=True):
        param -= lr_ * x


def _torch_sub_scaled_(param, lr, x):
    if torch.is_tensor(lr):  # per-replica learning rates, shaped to broadcast
        param.addcmul_(lr, x, value=-1)
    else:
        param.add_(x, alpha=-lr)  # one fused kernel, as torch.optim.SGD's update


def _torch_sub_scaled_all_(params, lr, xs):
    """``sub_scaled_`` over lists, in one multi-tensor kernel launch (torch.optim's foreach)."""
    if isinstance(lr, list):  # per-replica learning rates, one shaped tensor per parameter
        torch._foreach_addcmul_(params, lr, xs, value=-1)
    else:
        torch._foreach_add_(params, xs, alpha=-lr)


def _np_sub_matmul_(c, lr, a, b):
    c -= lr * (a @ b)


def _torch_sub_matmul_(c, lr, a, b):
    """c -= lr (a @ b) as one GEMM accumulating into c (beta = 1, alpha = -lr): no product tensor."""
    if c.dim() == 2:
        c.addmm_(a, b, alpha=-lr)
    else:
        c.baddbmm_(a, b, alpha=-lr)


def _np_add_at_label_(x, labels, value):
    index = labels[..., None]
    np.put_along_axis(x, index, np.take_along_axis(x, index, axis=-1) + value, axis=-1)


def _torch_add_at_label_(x, labels, value):
    x.scatter_(-1, labels.unsqueeze(-1), value, reduce="add")


NUMPY = SimpleNamespace(
    name="numpy",
    exp=np.exp, expm1=np.expm1, log=np.log, log1p=np.log1p, tanh=np.tanh, sqrt=np.sqrt, abs=np.abs,
    relu=lambda x: np.maximum(x, 0.0), sign=np.sign, erf=scipy.special.erf, sigmoid=scipy.special.expit,
    log_softmax=_np_log_softmax,
    where=np.where, maximum=np.maximum, minimum=np.minimum, clip=np.clip,
    sum=lambda x, axis=None, keepdims=False: np.sum(x, axis=axis, keepdims=keepdims),
    max=lambda x, axis=None, keepdims=False: np.max(x, axis=axis, keepdims=keepdims),
    mean=lambda x, axis=None, keepdims=False: np.mean(x, axis=axis, keepdims=keepdims),
    zeros_like=np.zeros_like, ones_like=np.ones_like, full_like=np.full_like,
    linear=_np_linear, add_at_label_=_np_add_at_label_, sub_scaled_=_np_sub_scaled_,
    sub_scaled_all_=_np_sub_scaled_all_, sub_matmul_=_np_sub_matmul_,
    take_label=lambda x, labels: np.take_along_axis(x, labels[..., None], axis=-1)[..., 0],
    isfinite=lambda x: bool(np.all(np.isfinite(x))),
    item=float,
)

TORCH = SimpleNamespace(
    name="torch",
    exp=torch.exp, expm1=torch.expm1, log=torch.log, log1p=torch.log1p, tanh=torch.tanh, sqrt=torch.sqrt,
    abs=torch.abs, relu=torch.relu, sign=torch.sign, erf=torch.special.erf, sigmoid=torch.sigmoid,
    log_softmax=lambda x: torch.log_softmax(x, dim=-1),
    where=torch.where,
    maximum=lambda x, y: torch.clamp(x, min=y) if not torch.is_tensor(y) else torch.maximum(x, y),
    minimum=lambda x, y: torch.clamp(x, max=y) if not torch.is_tensor(y) else torch.minimum(x, y),
    clip=torch.clamp,
    sum=lambda x, axis=None, keepdims=False: (
        x.sum() if axis is None else torch.sum(x, dim=axis, keepdim=keepdims)
    ),
    max=lambda x, axis=None, keepdims=False: (
        x.max() if axis is None else torch.amax(x, dim=axis, keepdim=keepdims)
    ),
    mean=lambda x, axis=None, keepdims=False: (
        x.mean() if axis is None else torch.mean(x, dim=axis, keepdim=keepdims)
    ),
    zeros_like=torch.zeros_like, ones_like=torch.ones_like, full_like=torch.full_like,
    linear=_torch_linear, add_at_label_=_torch_add_at_label_, sub_scaled_=_torch_sub_scaled_,
    sub_scaled_all_=_torch_sub_scaled_all_, sub_matmul_=_torch_sub_matmul_,
    take_label=lambda x, labels: x.gather(-1, labels.unsqueeze(-1)).squeeze(-1),
    isfinite=lambda x: bool(torch.isfinite(x).all()),
    item=lambda x: float(x),
)


def namespace(x: Array) -> SimpleNamespace:
    """The backend namespace of an array: numpy for ndarrays, torch for tensors."""
    return TORCH if isinstance(x, torch.Tensor) else NUMPY


@dataclass(frozen=True)
class Backend:
    """Where arrays live: ``numpy`` (CPU) or ``torch`` (CPU or CUDA), and in which dtype.

    ``Backend("numpy", "longdouble")`` runs the engine in extended precision, 11 more bits than
    float64 where the platform has them (x86-64): slow, for the tests' oracle of exact gradients.
    Activations built on ``erf`` (exact GELU) refuse it: scipy's erf has no longdouble loop."""

    name: str = "numpy"
    dtype: str = "float64"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise ValueError(f"backend {self.name!r} is not one of {BACKENDS}")
        if self.dtype == EXTENDED and self.name != "numpy":
            raise ValueError(f"dtype {EXTENDED!r} runs on the numpy backend only, not {self.name!r}")
        if self.dtype not in DTYPES + (EXTENDED,):
            raise ValueError(f"dtype {self.dtype!r} is not one of {DTYPES} (or {EXTENDED!r} on numpy)")
        if self.name == "numpy" and self.device != "cpu":
            raise ValueError(f"the numpy backend runs on cpu only, not {self.device!r}")

    @property
    def xp(self) -> SimpleNamespace:
        return TORCH if self.name == "torch" else NUMPY

    def asarray(self, a: Any, dtype: str | None = None) -> Array:
        """Copy ``a`` (numpy, torch or a list) into this backend, as ``dtype`` (default: ours)."""
        dtype = dtype or self.dtype
        if self.name == "numpy":
            a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
            return np.array(a, dtype=dtype)
        t = a.detach() if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
        return t.to(device=self.device, dtype=getattr(torch, dtype), copy=True)

    def labels(self, a: Any) -> Array:
        """Integer class labels in this backend (int64)."""
        return self.asarray(a, dtype="int64")


def to_numpy(a: Array) -> np.ndarray:
    """A numpy copy of any backend array (for logging, comparisons, files)."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)
