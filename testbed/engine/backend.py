"""One code path for numpy and torch arrays.

Every engine op starts with ``xp = namespace(x)`` and uses only the functions
of that namespace plus the operators both libraries share (``+ - * / @``,
``.mT``, ``.shape``, in-place ``-=``). Why a small layer of our own and not
the Array API (array-api-compat): the engine needs ``erf`` and a stable
``sigmoid``, which the standard lacks; the torch side maps straight onto
torch's own kernels (``addmm``/``baddbmm`` for a linear layer, as autograd's
``F.linear`` does) with no wrapper in the hot path; and the whole surface the
engine touches is listed here, in one screen, for a reader to check.

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
BACKENDS = ("numpy", "torch")


def _np_linear(x, weight, bias):
    return x @ weight.mT + bias[..., None, :] if x.ndim > 2 else x @ weight.T + bias


def _torch_linear(x, weight, bias):
    if x.dim() == 2:
        return torch.addmm(bias, x, weight.t())
    return torch.baddbmm(bias.unsqueeze(-2), x, weight.mT)


def _np_one_hot(labels, num_classes, like):
    return (labels[..., None] == np.arange(num_classes)).astype(like.dtype)


def _torch_one_hot(labels, num_classes, like):
    return (labels[..., None] == torch.arange(num_classes, device=like.device)).to(like.dtype)


NUMPY = SimpleNamespace(
    name="numpy",
    exp=np.exp, expm1=np.expm1, log=np.log, log1p=np.log1p, tanh=np.tanh, sqrt=np.sqrt, abs=np.abs,
    sign=np.sign, erf=scipy.special.erf, sigmoid=scipy.special.expit,
    where=np.where, maximum=np.maximum, minimum=np.minimum, clip=np.clip,
    sum=lambda x, axis=None, keepdims=False: np.sum(x, axis=axis, keepdims=keepdims),
    max=lambda x, axis=None, keepdims=False: np.max(x, axis=axis, keepdims=keepdims),
    mean=lambda x, axis=None, keepdims=False: np.mean(x, axis=axis, keepdims=keepdims),
    zeros_like=np.zeros_like, ones_like=np.ones_like, full_like=np.full_like,
    linear=_np_linear, one_hot=_np_one_hot,
    take_label=lambda x, labels: np.take_along_axis(x, labels[..., None], axis=-1)[..., 0],
    isfinite=lambda x: bool(np.all(np.isfinite(x))),
    item=float,
)

TORCH = SimpleNamespace(
    name="torch",
    exp=torch.exp, expm1=torch.expm1, log=torch.log, log1p=torch.log1p, tanh=torch.tanh, sqrt=torch.sqrt,
    abs=torch.abs, sign=torch.sign, erf=torch.special.erf, sigmoid=torch.sigmoid,
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
    linear=_torch_linear, one_hot=_torch_one_hot,
    take_label=lambda x, labels: torch.gather(x, -1, labels[..., None].long())[..., 0],
    isfinite=lambda x: bool(torch.isfinite(x).all()),
    item=lambda x: float(x),
)


def namespace(x: Array) -> SimpleNamespace:
    """The backend namespace of an array: numpy for ndarrays, torch for tensors."""
    return TORCH if isinstance(x, torch.Tensor) else NUMPY


@dataclass(frozen=True)
class Backend:
    """Where arrays live: ``numpy`` (CPU) or ``torch`` (CPU or CUDA), and in which dtype."""

    name: str = "numpy"
    dtype: str = "float64"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise ValueError(f"backend {self.name!r} is not one of {BACKENDS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {DTYPES}")
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
