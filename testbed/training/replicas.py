"""K replicas of one shape trained as one: parameters stacked on a leading replica axis.

``StackedTrainer`` is ``ManualTrainer`` over a stack: parameters (K, ...), inputs (K, B, D), one
learning rate per replica, every layer one batched matmul over the K replicas, each replica clipped
by its own norm; its step is ``manual_step``, as a single run's. ``ReplicaTrainer`` steps a large
stack as consecutive blocks of replicas (``replica_block``), each a ``StackedTrainer``. Replica k
of a stack trains as the same configuration alone (tests/test_replicas.py); the app's replica runs
(``testbed.app.replicas``: ``train.replicas=K``, the batching sweeper) are built on these.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from testbed.engine import Backend, MLPSpec
from testbed.engine.backend import to_numpy
from testbed.training.state import map_tensors, to_tensors
from testbed.training.trainers import ManualTrainer, accuracy

# Evaluation runs replicas in slices of at most this many activations (K x rows x units).
EVAL_ELEMENTS = 2**24


# -- one stack -------------------------------------------------------------------------------------

def _take(array, rows: np.ndarray):
    """``array[rows]`` along the replica axis, numpy or torch."""
    if isinstance(array, torch.Tensor):
        return array[torch.as_tensor(rows, device=array.device)]
    return array[rows]


def _expand(x, k: int):
    """A (n, ...) array seen as (k, n, ...) without a copy."""
    return x.expand(k, *x.shape) if isinstance(x, torch.Tensor) else np.broadcast_to(x, (k, *x.shape))


class StackedTrainer(ManualTrainer):
    """K replicas of the hand-written engine: parameters (K, ...), inputs (K, B, D), lr (K,).

    ``step`` returns the K losses; after a recorded step ``record`` holds the per-layer tensors
    (stacked) that the diagnostics read, as ``ManualTrainer.record`` does for one run. With
    ``cuda_graph`` the updating steps replay a CUDA graph (``testbed.engine.cuda_graph``), which
    captures again after the stack is cut (a replica diverged) or loaded from a checkpoint.
    """

    def __init__(self, spec: MLPSpec, initial: dict, backend: Backend, optimizer: str, hyper: dict,
                 lrs: list[float], clip_norm: float | None = None, cuda_graph: bool = False,
                 fuse_sgd: bool = True):
        # float64 numpy or a tensor of the params' dtype: as a python float lr meets the params alone
        lr = backend.asarray(np.asarray(lrs, dtype=np.float64))
        super().__init__(spec, initial, backend, optimizer, {**hyper, "lr": lr}, clip_norm, cuda_graph,
                         fuse_sgd)

    @property
    def count(self) -> int:
        return self.net.params["W1"].shape[0]

    def step(self, idx: np.ndarray, update: bool = True, record: bool = False) -> np.ndarray:
        """One step of every replica on its own minibatch, ``idx`` (K, B); returns the K losses."""
        return to_numpy(self._train_step(idx, update, record)).astype(np.float64)

    def replica_records(self) -> list[dict]:
        """``record`` cut into K per-replica records (numpy, one device-to-host copy per tensor)."""
        host = {key: None if value is None else [to_numpy(t) for t in value]
                for key, value in self.record.items()}
        return [{key: None if value is None else [t[k] for t in value] for key, value in host.items()}
                for k in range(self.count)]

    def _forward(self, params: dict, x):
        """The output of the replicas in ``params`` for inputs (k, n, D); no caches kept."""
        a = x
        for layer in range(1, self.spec.num_layers + 1):
            s = self.backend.xp.linear(a, params[f"W{layer}"], params[f"b{layer}"])
            a = s if layer == self.spec.num_layers else self.net.activation.forward(s)[0]
        return a

    def evaluate(self, split: str, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray | None]:
        """Each replica's (mean loss, accuracy) over a whole split, chunked as ``Trainer.evaluate``."""
        x, y = self.data[split]
        n, count = x.shape[0], self.count
        per_slice = max(1, EVAL_ELEMENTS // (min(chunk, n) * max(self.spec.layer_sizes)))
        losses, accuracies = np.zeros(count), []
        for first in range(0, count, per_slice):
            rows = slice(first, min(first + per_slice, count))
            params = {key: value[rows] for key, value in self.net.params.items()}
            k = rows.stop - rows.start
            total, outputs = np.zeros(k), []
            for start in range(0, n, chunk):
                xs, ys = x[start:start + chunk], y[start:start + chunk]
                out = self._forward(params, _expand(xs, k))
                loss = to_numpy(self.net.loss_fn.forward(out, _expand(ys, k))[0]).astype(np.float64)
                total += loss * min(chunk, n - start)
                outputs.append(to_numpy(out))
            losses[rows] = total / n
            output, target = np.concatenate(outputs, axis=1), to_numpy(y)
            accuracies += [accuracy(output[j], target, self.spec.loss) for j in range(k)]
        return losses, (None if accuracies[0] is None else np.array(accuracies))

    def params_numpy(self, k: int) -> dict[str, np.ndarray]:
        return {key: to_numpy(value[k]).copy() for key, value in self.net.params.items()}

    def state_dict(self) -> dict:
        """``ManualTrainer.state_dict`` and the replicas' learning rates (the stack may have been cut)."""
        state = super().state_dict()
        state["optimizer"]["lr"] = to_tensors(self.optimizer.lr)
        return state

    def load_state_dict(self, state: dict) -> None:
        """The inverse of ``state_dict``, for a stack already cut to the same replicas."""
        for key, value in state["params"].items():
            self.net.params[key] = self._to_backend(value)
        self.optimizer.state = map_tensors(state["optimizer"]["state"], self._to_backend)
        self.optimizer.steps = state["optimizer"]["steps"]
        self.optimizer.lr = self._to_backend(state["optimizer"]["lr"])

    def keep(self, rows: np.ndarray) -> None:
        """Keep only the replicas at ``rows`` (stack positions): parameters, optimiser state, lr."""
        for key, value in self.net.params.items():
            self.net.params[key] = _take(value, rows)
        for state in self.optimizer.state.values():
            for name, value in state.items():
                if isinstance(value, np.ndarray | torch.Tensor) and value.ndim >= 1:
                    state[name] = _take(value, rows)
        self.optimizer.lr = _take(self.optimizer.lr, rows)


# -- blocks: a large stack stepped in cache-sized pieces -------------------------------------------

# On CPU, a block's largest matrix (an activation, batch x width, or a weight gradient,
# fan_out x fan_in, times the block's replicas) is kept within this many bytes.
BLOCK_BYTES = 4 * 2**20


def replica_block(spec: MLPSpec, batch: int, backend: Backend, requested: int | None = None) -> int:
    """How many replicas one batched block holds: ``requested`` when given; else, on CUDA, all of
    them (one program: the GPU wants large launches); on CPU, as many as keep the block's largest
    matrix within ``BLOCK_BYTES``. A larger CPU block's temporaries leave the caches, and past glibc's
    32 MiB mmap threshold every step maps and zero-fills fresh pages for them: K=256 replicas of
    depth 20, width 256, batch 128 (float32, 2 CPU cores) ran at 44 replica-steps/s in one stack
    and at 124 in blocks of 16."""
    if requested is not None:
        return requested
    if backend.name == "torch" and str(backend.device).startswith("cuda"):
        return sys.maxsize
    sizes = spec.layer_sizes
    largest = max(max(batch * fan_out, batch * fan_in, fan_in * fan_out)
                  for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True))
    itemsize = 8 if backend.dtype == "float64" else 4
    return max(1, BLOCK_BYTES // (largest * itemsize))


def _concat_states(states: list):
    """Block states (``StackedTrainer.state_dict``) as one: replica-axis tensors concatenated."""
    first = states[0]
    if isinstance(first, dict):
        return {key: _concat_states([state[key] for state in states]) for key in first}
    if isinstance(first, torch.Tensor) and first.ndim >= 1:
        return torch.cat(states)
    return first  # a step count, the same in every block


def _slice_state(state, start: int, stop: int):
    """Replicas ``start:stop`` of a state of the whole stack (the inverse of ``_concat_states``)."""
    if isinstance(state, dict):
        return {key: _slice_state(value, start, stop) for key, value in state.items()}
    if isinstance(state, torch.Tensor) and state.ndim >= 1:
        return state[start:stop]
    return state


class ReplicaTrainer:
    """K replicas as consecutive blocks of at most ``block`` replicas (``replica_block``), each a
    ``StackedTrainer`` with its own parameters, optimiser state and (with ``cuda_graph``) graph,
    stepped one after another. It offers a ``StackedTrainer``'s interface over all K, replica j
    being position j of the blocks laid end to end; ``state_dict`` is that of one stack of K, so a
    checkpoint does not depend on the block size."""

    def __init__(self, spec: MLPSpec, initial: dict, backend: Backend, optimizer: str, hyper: dict,
                 lrs: list[float], clip_norm: float | None = None, cuda_graph: bool = False,
                 block: int = sys.maxsize, fuse_sgd: bool = True):
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.spec = spec
        self.blocks = []
        for first in range(0, len(lrs), block):
            rows = slice(first, first + block)
            params = {key: value[rows] for key, value in initial.items()}
            self.blocks.append(StackedTrainer(spec, params, backend, optimizer, hyper, lrs[rows], clip_norm,
                                              cuda_graph, fuse_sgd))

    @property
    def count(self) -> int:
        return sum(b.count for b in self.blocks)

    def _spans(self) -> list[tuple[StackedTrainer, int, int]]:
        """(block, first, stop): the positions each block holds."""
        spans, first = [], 0
        for b in self.blocks:
            spans.append((b, first, first + b.count))
            first += b.count
        return spans

    def _locate(self, j: int) -> tuple[StackedTrainer, int]:
        for b, first, stop in self._spans():
            if first <= j < stop:
                return b, j - first
        raise IndexError(f"replica {j} of {self.count}")

    def load_data(self, x_train, y_train, x_test, y_test) -> None:
        self.blocks[0].load_data(x_train, y_train, x_test, y_test)
        for b in self.blocks[1:]:
            b.data = self.blocks[0].data  # one copy of the data set for all blocks

    def step(self, idx: np.ndarray, update: bool = True, record: bool = False) -> np.ndarray:
        """One step of every replica on its own minibatch, ``idx`` (K, B); returns the K losses."""
        return np.concatenate([b.step(idx[first:stop], update, record) for b, first, stop in self._spans()])

    def replica_records(self) -> list[dict]:
        return [record for b in self.blocks for record in b.replica_records()]

    def evaluate(self, split: str) -> tuple[np.ndarray, np.ndarray | None]:
        results = [b.evaluate(split) for b in self.blocks]
        accuracies = None if results[0][1] is None else np.concatenate([acc for _, acc in results])
        return np.concatenate([loss for loss, _ in results]), accuracies

    def params_numpy(self, j: int) -> dict[str, np.ndarray]:
        b, k = self._locate(j)
        return b.params_numpy(k)

    def replica_params(self, j: int) -> dict:
        b, k = self._locate(j)
        return {key: value[k] for key, value in b.net.params.items()}

    def replica_grads(self, j: int) -> dict:
        """Replica j's gradients of the last step."""
        b, k = self._locate(j)
        return {key: value[k] for key, value in b.grads.items()}

    def replica_grad_norm(self, j: int):
        """Replica j's gradient norm before clipping, of the last step (None where none was formed)."""
        b, k = self._locate(j)
        return None if b.grad_norm is None else b.grad_norm[k]

    def minibatches(self, idx: np.ndarray) -> list[tuple]:
        """Per block: its parameters and its replicas' minibatches (x (k, B, D), y) of ``idx`` (K, B)."""
        return [(b.net.params, b.minibatch(idx[first:stop])) for b, first, stop in self._spans()]

    def state_dict(self) -> dict:
        return _concat_states([b.state_dict() for b in self.blocks])

    def load_state_dict(self, state: dict) -> None:
        """The inverse of ``state_dict``, for blocks already cut to the same replicas."""
        for b, first, stop in self._spans():
            b.load_state_dict(_slice_state(state, first, stop))

    def keep(self, rows: np.ndarray) -> None:
        """Keep only the replicas at ``rows`` (positions, ascending); a block left empty is dropped."""
        kept = []
        for b, first, stop in self._spans():
            own = rows[(rows >= first) & (rows < stop)] - first
            if len(own) == stop - first:
                kept.append(b)
            elif len(own):
                b.keep(own)
                kept.append(b)
        self.blocks = kept
