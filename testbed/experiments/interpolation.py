"""Goodfellow, Vinyals & Saxe 2015: on the straight line from the initial to the final parameters,
the loss of a trained net falls with no significant barrier.

From each run's params_init.npz and params_final.npz the engine evaluates the full training and
test loss at theta(a) = (1 - a) theta_0 + a theta_1 for a in [-0.5, 1.5]. A barrier is the largest
rise of the training loss along a in [0, 1] after any earlier point (``analysis.largest_rise``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from testbed.data import load_dataset
from testbed.engine import MLPSpec
from testbed.experiments.analysis import largest_rise, loss_along_line
from testbed.experiments.base import Claim, figure_path, pyplot, save_figure
from testbed.tracking.sweep import Run

NAME = "interpolation"
SMOKE = ["model.activation=tanh", "seed=0", "train.epochs=1"]

ALPHAS = np.round(np.linspace(-0.5, 1.5, 81), 6)  # steps of 0.025; a = 0 and a = 1 on the grid
BARRIER_MAX = 0.01  # of the drop L(0) - L(1)

PAPER = "Goodfellow, Vinyals & Saxe 2015 (ICLR), Figs. 1-3"
LINE = Claim(
    preset=NAME, paper=PAPER,
    setup="Digits, 64-64-64-10 MLP (tanh and relu, Xavier init, zero biases), SGD momentum 0.9 lr 0.05, "
          "batch 64, 10 epochs, 5 seeds each; full training loss at theta(a) = (1-a) theta_0 + a theta_1 "
          "for 81 values of a in [-0.5, 1.5] (engine, float64). Trained with the engine and torch side "
          "by side (float64).",
    paper_says="The loss along the straight line from initialisation to the solution decreases "
               "monotonically: no significant barrier, for a variety of networks.",
    criterion=f"For every run (10 of 10), the largest rise of the training loss along a in [0, 1] is "
              f"<= {BARRIER_MAX:.0%} of L(0) - L(1), and L(1) < L(0).",
)
CLAIMS = [LINE]


def line_losses(run: Run, data_cache: dict) -> tuple[np.ndarray, np.ndarray]:
    """(training loss, test loss) along ALPHAS for one run."""
    data_seed = int(run.get("data.seed", 0))
    if data_seed not in data_cache:
        data_cache[data_seed] = load_dataset(str(run.get("data.name")), seed=data_seed)
    data = data_cache[data_seed]
    spec = MLPSpec(data.in_features, data.out_features, depth=int(run.get("model.depth")),
                   width=int(run.get("model.width")), activation=str(run.get("model.activation")),
                   loss=data.loss)
    start, end = run.params("init"), run.params("final")
    return (loss_along_line(spec, start, end, ALPHAS, data.x_train, data.y_train),
            loss_along_line(spec, start, end, ALPHAS, data.x_test, data.y_test))


def analyse(runs: list[Run], figures_dir: Path, smoke: bool = False) -> list[Claim]:
    plt = pyplot()
    ok = [r for r in runs if r.status == "completed"]
    cache: dict = {}
    inside = (ALPHAS >= 0) & (ALPHAS <= 1)
    i0, i1 = int(np.argmin(np.abs(ALPHAS))), int(np.argmin(np.abs(ALPHAS - 1)))
    results = []
    with threadpool_limits(1):
        for run in ok:
            train, test = line_losses(run, cache)
            drop = train[i0] - train[i1]
            rise = largest_rise(train[inside])
            results.append((run, train, test, drop, rise))
    fractions = [rise / drop if drop > 0 else float("inf") for _, _, _, drop, rise in results]
    passed = bool(results) and len(results) == len(runs) and all(
        drop > 0 and rise <= BARRIER_MAX * drop for _, _, _, drop, rise in results)
    cmp = [r.summary.get("cmp/grad_max_rel_err_max") for r in ok if r.summary.get("cmp/grad_max_rel_err_max")
           is not None]

    fig, (ax, ax_norm) = plt.subplots(1, 2, figsize=(11, 4.3))
    colors = {"tanh": "tab:blue", "relu": "tab:orange"}
    seen = set()
    for run, train, test, drop, _ in results:
        act = str(run.get("model.activation"))
        first = act not in seen
        seen.add(act)
        ax.plot(ALPHAS, train, color=colors.get(act, "k"), lw=1,
                label=f"{act}: training loss" if first else None)
        ax.plot(ALPHAS, test, color=colors.get(act, "k"), lw=1, ls="--", alpha=0.6,
                label=f"{act}: test loss" if first else None)
        a_in = ALPHAS[inside]
        ax_norm.plot(a_in, (train[inside] - train[i1]) / drop, color=colors.get(act, "k"), lw=1,
                     label=f"{act} (one line per seed)" if first else None)
    for a in (0, 1):
        ax.axvline(a, color="gray", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("a: theta = (1 - a) theta_init + a theta_final")
    ax.set_ylabel("cross-entropy loss (full split)")
    ax.set_title("Loss along the line, a in [-0.5, 1.5]")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax_norm.set_xlabel("a (initial = 0, trained = 1)")
    ax_norm.set_ylabel("(L(a) - L(1)) / (L(0) - L(1)), training loss")
    ax_norm.set_title("Normalised on [0, 1] (a barrier would show as a bump)")
    ax_norm.legend(fontsize=8)
    ax_norm.grid(True, alpha=0.3)
    figure = save_figure(fig, figure_path(figures_dir, "interpolation_line"))

    worst = max(fractions) if fractions else float("nan")
    drops = [d for *_, d, _ in results]
    if not results:
        return [replace(LINE, passed=False, note="no finished runs")]
    return [replace(
        LINE, passed=passed, figure=figure,
        measured=f"{len(results)} runs; largest barrier / drop = {worst:.2e} (worst run), drop L(0)-L(1) "
                 f"from {min(drops):.2f} to {max(drops):.2f}"
                 + (f"; engine vs torch, largest gradient relative error during training {max(cmp):.1e}"
                    if cmp else "") + ".",
        note="" if passed else "A run shows a rise of the training loss along the line larger than the "
                               "pre-registered tolerance (see the right panel).",
        details={"barrier_fraction": fractions, "grad_rel_err_max": max(cmp) if cmp else None})]
