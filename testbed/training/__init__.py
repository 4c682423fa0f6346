"""Training: the one step of each engine, and the trainers built on it.

Between the engine (``testbed.engine``, and the torch reference's builders in
``testbed.reference.model``) and the app (``testbed.app``), with no config, logging or files:

- ``step``: ``manual_step`` and ``torch_step``, the only training steps (forward, loss, backward,
  clipping, update; the diagnostics' per-layer record). Whether the engine fuses the update into
  backward is ``testbed.engine.fused_step_lr``'s to say.
- ``trainers``: ``ManualTrainer`` and ``TorchTrainer``: data, minibatches by indices, evaluation,
  state for checkpoints.
- ``replicas``: ``StackedTrainer`` (K replicas stacked on a leading axis) and ``ReplicaTrainer``
  (a large stack in blocks).
- ``state``: a trainer's state as CPU tensors and back in place.

The app (a run, replica runs), ``testbed.reference.lockstep`` and ``scripts/bench.py`` step
through these.
"""

from testbed.training.replicas import ReplicaTrainer, StackedTrainer, replica_block
from testbed.training.step import StepResult, manual_step, torch_clip_and_update, torch_step
from testbed.training.trainers import ManualTrainer, TorchTrainer, Trainer, accuracy

__all__ = ["ManualTrainer", "ReplicaTrainer", "StackedTrainer", "StepResult", "TorchTrainer", "Trainer",
           "accuracy", "manual_step", "replica_block", "torch_clip_and_update", "torch_step"]
