"""What every preset shares: the claim record, running a preset's sweep, plotting defaults.

A preset is a module in ``testbed/experiments/`` with
- ``NAME`` (the ``conf/experiment/NAME.yaml`` it runs) and ``SMOKE`` (overrides for a toy run),
- ``CLAIMS``: the pre-registered criteria, fixed from the paper and the theory before running,
- ``analyse(runs, figures_dir, smoke) -> list[Claim]``: measured values, PASS/FAIL, figures;
- optionally ``compute(out_dir, smoke) -> list[Run] | dict`` for a preset that is a measurement
  rather than a training sweep (its ``analyse`` then receives what ``compute`` returned).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from testbed.tracking.sweep import Run, load_sweep


@dataclass
class Claim:
    preset: str
    paper: str  # paper and figure/table, e.g. "Glorot & Bengio 2010, Fig. 7"
    setup: str  # our setup, in a sentence
    paper_says: str  # what the paper reports
    criterion: str  # the pre-registered test, in words (with its numbers)
    measured: str = ""  # what we measured, with the numbers
    passed: bool | None = None  # None: could not be evaluated (say why in note)
    figure: str | None = None  # file name under results/figures/
    note: str = ""  # for a FAIL: a sentence on why
    details: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]


def mark_smoke(claims: list[Claim]) -> None:
    """A toy run decides nothing: say so on every claim (n/a is kept for real runs only)."""
    for claim in claims:
        claim.note = "smoke run: toy sizes, the verdict means nothing"
        claim.passed = bool(claim.passed)


def explain_failures(claims: list[Claim], why: dict[int, str], default: str | None = None) -> None:
    """Give each FAIL without a note the sentence ``why[index]`` (or ``default``); verdicts stay."""
    for index, claim in enumerate(claims):
        if claim.passed is False and not claim.note:
            claim.note = why[index] if default is None else why.get(index, default)


def run_preset(name: str, sweep_dir: Path, overrides: list[str] | tuple = (), n_jobs: int = 2,
               timeout: float = 1800) -> list[Run]:
    """Run ``+experiment=NAME -m`` with the joblib launcher into ``sweep_dir``; return its runs."""
    # -m before the overrides: Hydra's argparse takes one run of positional overrides only
    command = [sys.executable, "-m", "testbed", "-m", f"+experiment={name}", "hydra/launcher=joblib",
               f"hydra.launcher.n_jobs={n_jobs}", "logger=none", f"hydra.sweep.dir={sweep_dir}",
               "train.progress=false", *overrides]
    # one thread per job: n_jobs processes share the cores, and oversubscribed torch threads
    # spin (a step measured 20x slower with 2 threads per job on 2 loaded cores)
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"preset {name} failed (exit {proc.returncode}):\n{tail}")
    return load_sweep(sweep_dir)


def group_by(runs: list[Run], *keys: str) -> dict[tuple, list[Run]]:
    """Runs grouped by the values of dotted config keys, e.g. group_by(runs, "model.depth")."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.get(k) for k in keys), []).append(run)
    return dict(sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])))


def figure_path(figures_dir: Path, name: str) -> Path:
    figures_dir.mkdir(parents=True, exist_ok=True)
    return figures_dir / f"{name}.png"


def save_figure(fig, path: Path) -> str:
    """Save a matplotlib figure (tight, 120 dpi) and close it; returns the file name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
