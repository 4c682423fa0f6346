"""Checkpoints, and what a run does with the folder it finds.

``checkpoint.pt`` (written atomically every ``train.checkpoint_every`` steps) holds everything the
training loop reads, so that a resumed run continues exactly where it stopped:

- ``trainers``: each trainer's ``state_dict()`` (parameters and optimiser state, as tensors);
- ``sampler``: the minibatch order's place (``BatchSampler.state_dict()``);
- ``rng``: the python, numpy and torch (and CUDA) generator states;
- ``loop``: the next step, the summary so far, the initial and last finite loss, the largest
  discrepancies, the wall time so far, and ``metrics_bytes``: the length of metrics.jsonl when
  the checkpoint was taken (a resumed run cuts the file back to it);
- ``config``: the resolved config it belongs to.

Numbers are stored as tensors and python floats (pickled exactly, never through text), and the
file is read with ``torch.load(weights_only=True)``: plain containers and tensors only.

``plan_run`` decides, from the folder's ``summary.json``, ``config.yaml`` and ``checkpoint.pt``,
whether a run starts fresh, resumes, or has nothing to do.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from testbed.app.schema import ConfigError
from testbed.tracking.files import atomic_write_bytes, read_json

CHECKPOINT = "checkpoint.pt"
FORMAT = 1
FINISHED = ("completed", "diverged")  # a summary with one of these is a result: never redone
# Keys that cannot change a run's numbers: a resumed run may differ in them.
IGNORED_KEYS = ("train.resume", "train.progress", "train.checkpoint_every", "logger")


# -- the file --------------------------------------------------------------------------------------

def save_checkpoint(run_dir: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write_bytes(Path(run_dir) / CHECKPOINT, buffer.getvalue())


def load_checkpoint(run_dir: Path) -> dict | None:
    """The checkpoint in ``run_dir``, or None when there is none or it cannot be read."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a file we did not write whole (cannot happen with atomic writes) or a stranger
        return None
    return state if isinstance(state, dict) and state.get("format") == FORMAT else None


# -- generator states ------------------------------------------------------------------------------

def rng_state(device: str) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if device == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# -- what to do with a run folder ------------------------------------------------------------------

def config_dict(cfg: DictConfig | str) -> dict:
    """A resolved config (or its YAML) as plain data, without the keys that cannot change numbers."""
    if not isinstance(cfg, str):  # the hydra node resolves only inside a job: leave it out
        cfg = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    data = yaml.safe_load(cfg) or {}
    for dotted in IGNORED_KEYS:
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return data


def _flatten(data: Any, prefix: str = "") -> dict:
    if isinstance(data, dict) and data:
        out = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def config_differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs."""
    a, b = _flatten(old), _flatten(new)
    missing = "(absent)"
    return [f"{key}: {a.get(key, missing)} -> {b.get(key, missing)}"
            for key in sorted(set(a) | set(b)) if a.get(key, missing) != b.get(key, missing)]


@dataclass
class Plan:
    """What a run does with its folder: ``fresh``, ``resume`` (from ``checkpoint``), or ``skip``."""

    action: str
    reason: str = ""  # one line for the log; empty for a plain fresh run
    checkpoint: dict | None = None
    summary: dict | None = None  # for skip: the finished run's summary


def read_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "summary.json"
    try:
        summary = read_json(path)
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def plan_run(run_dir: Path, cfg: DictConfig, multirun: bool) -> Plan:
    """Fresh, resume or skip.

    Resuming is on with ``train.resume=true``, off with ``false``, and by default (null) on in
    sweeps and off for single runs. When on: a finished run (completed or diverged) of the same
    config is skipped; an unfinished one (killed, failed) resumes from its checkpoint, or starts
    again without one. A folder holding a different config (other than the keys in
    ``IGNORED_KEYS``) is refused for a single run (ConfigError) and started from scratch in a sweep.
    """
    run_dir = Path(run_dir)
    resume = cfg.train.resume if cfg.train.resume is not None else multirun
    if not resume:
        return Plan("fresh")
    checkpoint = load_checkpoint(run_dir)
    stored = checkpoint["config"] if checkpoint else None
    if stored is None and (run_dir / "config.yaml").is_file():
        stored = (run_dir / "config.yaml").read_text()
    if stored is None:
        return Plan("fresh", f"nothing to resume in {run_dir}: starting fresh")
    differences = config_differences(config_dict(stored), config_dict(cfg))
    if differences:
        shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more"
                                              if len(differences) > 3 else "")
        if not multirun:
            raise ConfigError(f"train.resume=true but {run_dir} holds a run of another config ({shown}); "
                              "resume with the same config, or run into a new folder")
        return Plan("fresh", f"{run_dir} holds a run of another config ({shown}): starting from scratch")
    summary = read_summary(run_dir)
    if summary and summary.get("status") in FINISHED:
        return Plan("skip", f"already {summary['status']}: nothing to do", summary=summary)
    was = f"{summary['status']}" if summary else "incomplete"
    metrics = run_dir / "metrics.jsonl"
    if checkpoint and metrics.is_file() and metrics.stat().st_size >= checkpoint["loop"]["metrics_bytes"]:
        return Plan("resume", f"{was}: resuming from the checkpoint at step {checkpoint['loop']['step']}",
                    checkpoint=checkpoint)
    if checkpoint:
        return Plan("fresh", f"{was}, and metrics.jsonl is shorter than its checkpoint says: "
                             "starting from scratch")
    return Plan("fresh", f"{was} with no checkpoint: starting from scratch")
