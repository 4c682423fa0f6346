"""Resumable minibatch order: epoch e is the permutation drawn from `np.random.default_rng([seed, e])`,
so the order is a pure function of (seed, epoch, position) and a checkpoint needs only those."""

from __future__ import annotations

import numpy as np

from .dataset import check_int


class BatchSampler:
    """Yields minibatch index arrays forever, epoch after epoch.

    `batch_size` above `num_examples` is clamped to it (full batch). With `drop_last` the short final
    batch of each epoch is skipped, else it is yielded short. `epoch` and `position` (the index within the
    epoch's permutation) always point at the next batch: after an epoch's last batch, epoch moves on.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, drop_last: bool = False) -> None:
        self.num_examples = check_int("num_examples", num_examples)
        self.batch_size = min(check_int("batch_size", batch_size), self.num_examples)
        self.seed = check_int("seed", seed, 0)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.position = 0
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    @property
    def batches_per_epoch(self) -> int:
        """Number of batches in every epoch."""
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def _epoch_end(self) -> int:
        """Position at which the current epoch is over."""
        if self.drop_last:
            return self.num_examples - self.num_examples % self.batch_size
        return self.num_examples

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of `range(num_examples)` used in `epoch`."""
        if self._order is None or self._order_epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            self._order_epoch = epoch
        return self._order

    def next(self) -> np.ndarray:
        """The next batch of example indices (int64)."""
        batch = self.order(self.epoch)[self.position : self.position + self.batch_size].copy()
        self.position += len(batch)
        if self.position >= self._epoch_end:
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def __iter__(self) -> BatchSampler:
        return self

    def __next__(self) -> np.ndarray:
        return self.next()

    def state_dict(self) -> dict:
        """Plain-int state (configuration and place) for a checkpoint."""
        return {
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "drop_last": self.drop_last,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at the place saved by `state_dict`; the configuration must match this sampler's."""
        for key in ("num_examples", "batch_size", "seed", "drop_last"):
            if state.get(key) != getattr(self, key):
                mine = getattr(self, key)
                raise ValueError(f"sampler state has {key}={state.get(key)!r}, this sampler has {mine!r}")
        epoch = check_int("epoch", state.get("epoch"), 0)
        position = check_int("position", state.get("position"), 0)
        if position >= self._epoch_end or position % self.batch_size:
            raise ValueError(f"sampler state position {position} is not a batch start within an epoch")
        self.epoch, self.position = epoch, position
