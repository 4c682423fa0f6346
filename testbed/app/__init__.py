"""The Hydra app: typed configs (schema), command-line checks (preflight), the run (run, trainers)."""
