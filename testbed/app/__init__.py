"""The Hydra app: typed configs (schema), command-line checks (preflight), a run (run), replica runs
(replicas), checkpoints (checkpoint); it trains with ``testbed.training``."""
