"""Read a run folder or a whole sweep folder back: config, overrides, metrics, summary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from testbed.tracking.files import read_json, read_metrics


@dataclass
class Run:
    path: Path
    config: dict
    overrides: dict[str, str]  # the sweep's key=value overrides of this job
    metrics: list[dict]
    summary: dict | None  # None: the run never finished (killed, or still running)

    @property
    def status(self) -> str:
        return self.summary["status"] if self.summary else "incomplete"

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def params(self, which: str = "final") -> dict[str, np.ndarray]:
        """params_init.npz / params_final.npz (written with train.save_params=true)."""
        with np.load(self.path / f"params_{which}.npz") as data:
            return dict(data)

    def get(self, dotted: str, default=None):
        """A config value by dotted key, e.g. run.get("model.depth")."""
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def load_run(path: str | Path) -> Run:
    path = Path(path)
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").exists() else {}
    overrides: dict[str, str] = {}
    override_file = path / ".hydra" / "overrides.yaml"
    if override_file.exists():
        for item in yaml.safe_load(override_file.read_text()) or []:
            key, _, value = item.partition("=")
            overrides[key.lstrip("+~")] = value
    metrics = read_metrics(path / "metrics.jsonl") if (path / "metrics.jsonl").exists() else []
    summary = read_json(path / "summary.json") if (path / "summary.json").exists() else None
    return Run(path, config, overrides, metrics, summary)


def load_sweep(sweep_dir: str | Path) -> list[Run]:
    """Every job folder of a sweep (those Hydra made: a .hydra folder inside), in job order."""
    sweep_dir = Path(sweep_dir)
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    jobs.sort(key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    return [load_run(p) for p in jobs]
