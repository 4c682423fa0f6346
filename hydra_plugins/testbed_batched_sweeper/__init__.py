"""``hydra/sweeper=batched``: Hydra's basic sweep, with the points that differ only in batchable keys
(seed, optim.lr, model.init, model.init_scale) trained together as replicas in one job.

See ``batched_sweeper.py``; the replica runner is ``testbed.app.replicas``.
"""

__version__ = "0.1.0"
