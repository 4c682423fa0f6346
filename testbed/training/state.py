"""A trainer's state (parameters, optimiser state) as CPU tensors, and back in place.

``state_dict()`` of every trainer gives its arrays as CPU tensors (``to_tensors``), bit for bit, so
that a checkpoint (``testbed.app.checkpoint``) is plain containers and tensors; ``load_state_dict``
takes them back, into the arrays the trainer already holds where it can (``load_in_place``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_tensors(tree: Any) -> Any:
    """numpy arrays (and numpy scalars) and tensors -> CPU tensors, bit for bit; containers kept."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().clone()
    if isinstance(tree, np.ndarray | np.generic):
        return torch.from_numpy(np.array(tree))
    if isinstance(tree, dict):
        return {k: to_tensors(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(to_tensors(v) for v in tree)
    return tree


def map_tensors(tree: Any, convert) -> Any:
    """``convert`` applied to every tensor in a tree of dicts, lists and tuples."""
    if isinstance(tree, torch.Tensor):
        return convert(tree)
    if isinstance(tree, dict):
        return {k: map_tensors(v, convert) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(map_tensors(v, convert) for v in tree)
    return tree


def load_in_place(current: dict, saved: dict, convert) -> None:
    """``saved`` (a checkpoint's optimiser state) into ``current``: into its arrays in place where
    they match in shape, as new arrays (``convert``) where there are none yet."""
    for key in list(current):
        if key not in saved:
            del current[key]
    for key, value in saved.items():
        here = current.get(key)
        if isinstance(here, dict) and isinstance(value, dict):
            load_in_place(here, value, convert)
        elif isinstance(here, torch.Tensor) and isinstance(value, torch.Tensor) and here.shape == value.shape:
            here.copy_(value)
        elif isinstance(here, np.ndarray) and isinstance(value, torch.Tensor) and here.shape == value.shape:
            here[...] = value.numpy()
        else:
            current[key] = map_tensors(value, convert)
