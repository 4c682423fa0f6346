"""Universal approximation (Cybenko 1989; Hornik 1991) as a width sweep of one-hidden-layer nets.

The theorems are existence results: for a continuous target on a compact interval the sup error
of the best one-hidden-layer net goes to 0 as the width grows. We train (so training, not only
expressivity, limits what we see) and measure on a dense grid, from the runs' params_final.npz:
- the sup error max_x |f(x) - net(x)| and the mean error mean_x |f(x) - net(x)|;
- for the step target, which is not continuous, theory says the sup error of any continuous
  net is >= 1 (the net cannot jump at 0), while the mean error (an L1 distance) can still vanish.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from testbed.engine import MLPSpec
from testbed.experiments.analysis import NUMPY64, network
from testbed.experiments.base import Claim, figure_path, group_by, pyplot, save_figure
from testbed.tracking.sweep import Run

NAME = "universal_approx"
SMOKE = ["model.width=2", "seed=0", "train.steps=50", "train.log_every=25"]

# the targets of testbed.data.synthetic.sine, on [-1, 1]
TARGETS = {
    "sin": lambda x: np.sin(2 * np.pi * x),
    "abs": np.abs,
    "step": lambda x: np.where(x >= 0, 1.0, -1.0),
}
# a dense grid, plus a point just left of the jump of the step (a continuous net cannot separate
# -1e-12 from 0, so the sup error over [-1, 1] shows on the grid)
GRID = np.union1d(np.linspace(-1.0, 1.0, 4001), [-1e-12])
DROP_FACTOR = 0.1  # continuous targets: error at the widest net <= 0.1 x error at width 1
STEP_MEAN_MAX = 0.05
STEP_SUP_MIN = 0.99

PAPER = "Cybenko 1989; Hornik 1991 (universal approximation theorems)"
SETUP = ("One hidden layer of tanh units, width 1-64, fitted to {target} on [-1, 1] (256 uniform "
         "training points, full-batch Adam lr 0.01, 3000 steps, MSE, torch-default init), 3 seeds; "
         "errors of the trained net on a 4002-point grid. Manual engine.")

CONTINUOUS = Claim(
    preset=NAME, paper=PAPER,
    setup=SETUP.format(target="sin(2 pi x) and |x|"),
    paper_says="One hidden layer approximates any continuous function on a compact set uniformly "
               "well given enough units (existence only; no rate, no training).",
    criterion=f"For sin and |x|, the median (over seeds) sup error and mean error at width 64 are each "
              f"<= {DROP_FACTOR:g} x their value at width 1.",
)
STEP = Claim(
    preset=NAME, paper=PAPER + " (discontinuous target)",
    setup=SETUP.format(target="a step (-1 for x < 0, +1 from 0 on)"),
    paper_says="The theorems cover continuous targets in the sup norm; a discontinuous step is "
               "approximated only in L^p / in measure (Hornik 1991): no continuous net has sup "
               "error below 1 against a jump of height 2.",
    criterion=f"Median mean error at width 64 <= {STEP_MEAN_MAX:g}, while every run at every width has "
              f"sup error >= {STEP_SUP_MIN:g}.",
)
CLAIMS = [CONTINUOUS, STEP]


def spec_of(run: Run) -> MLPSpec:
    return MLPSpec(1, 1, depth=int(run.get("model.depth")), width=int(run.get("model.width")),
                   activation=str(run.get("model.activation")), loss="mse")


def prediction(run: Run, x: np.ndarray = GRID) -> np.ndarray:
    """The trained net on the points x, through the engine (float64)."""
    return np.asarray(network(spec_of(run), run.params("final")).forward(NUMPY64.asarray(x[:, None])))[:, 0]


def errors(run: Run) -> tuple[float, float]:
    """(sup error, mean absolute error) of the trained net against its target on GRID."""
    gap = np.abs(prediction(run) - TARGETS[run.get("data.options.function")](GRID))
    return float(gap.max()), float(gap.mean())


def analyse(runs: list[Run], figures_dir: Path, smoke: bool = False) -> list[Claim]:
    plt = pyplot()
    ok_runs = [r for r in runs if r.status == "completed"]
    table: dict[str, dict[int, np.ndarray]] = {}  # function -> width -> (seeds, 2) [sup, mean]
    for (function, width), group in group_by(ok_runs, "data.options.function", "model.width").items():
        table.setdefault(function, {})[int(width)] = np.array([errors(r) for r in group])
    widths = sorted({w for f in table.values() for w in f})
    lo_w, hi_w = (widths[0], widths[-1]) if widths else (None, None)

    def med(function, width, col):
        return float(np.median(table[function][width][:, col]))

    # --- continuous targets
    cont_ok, parts = True, []
    for function in ("sin", "abs"):
        if function not in table or lo_w is None:
            cont_ok = False
            continue
        for col, what in ((0, "sup"), (1, "mean")):
            first, last = med(function, lo_w, col), med(function, hi_w, col)
            cont_ok &= hi_w == 64 and lo_w == 1 and last <= DROP_FACTOR * first
            parts.append(f"{function} {what}: {first:.3f} (width {lo_w}) -> {last:.4f} (width {hi_w}), "
                         f"x{last / first:.3f}")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, function in zip(axes, ("sin", "abs"), strict=True):
        _plot_errors(ax, table.get(function, {}), f"target {'sin(2 pi x)' if function == 'sin' else '|x|'}")
    axes[0].set_ylabel("error of the trained net on [-1, 1]")
    fig.suptitle("Continuous targets: error of the trained net against width")
    cont_fig = save_figure(fig, figure_path(figures_dir, "universal_approx_continuous"))

    # --- the step
    step_ok, step_text = False, "no step runs"
    if "step" in table and lo_w is not None:
        sups = np.concatenate([table["step"][w][:, 0] for w in widths])
        mean_hi = med("step", hi_w, 1)
        step_ok = hi_w == 64 and mean_hi <= STEP_MEAN_MAX and bool(np.all(sups >= STEP_SUP_MIN))
        step_text = (f"step: median mean error {med('step', lo_w, 1):.3f} (width {lo_w}) -> {mean_hi:.4f} "
                     f"(width {hi_w}); sup error over all runs in [{sups.min():.3f}, {sups.max():.3f}].")
    fig, (ax, ax_fit) = plt.subplots(1, 2, figsize=(10, 4.2))
    _plot_errors(ax, table.get("step", {}), "target: step at 0")
    ax.axhline(1.0, color="k", ls=":", lw=1, label="sup error floor of any continuous net (1)")
    ax.legend(fontsize=8)
    ax.set_ylabel("error of the trained net on [-1, 1]")
    step_runs = {int(r.get("model.width")): r for r in ok_runs
                 if r.get("data.options.function") == "step" and int(r.get("seed")) == 0}
    zoom = np.linspace(-0.25, 0.25, 1001)
    ax_fit.plot(zoom, TARGETS["step"](zoom), "k-", lw=2, label="target")
    for width in [w for w in (1, 4, 64) if w in step_runs] or sorted(step_runs)[:3]:
        ax_fit.plot(zoom, prediction(step_runs[width], zoom), label=f"width {width} (seed 0)")
    ax_fit.set_xlabel("x (zoom on the jump)")
    ax_fit.set_ylabel("net(x)")
    ax_fit.set_title("Fits near the jump (seed 0)")
    ax_fit.legend(fontsize=8)
    fig.suptitle("Step target: mean and sup error against width")
    step_fig = save_figure(fig, figure_path(figures_dir, "universal_approx_step"))

    return [
        replace(CONTINUOUS, passed=cont_ok, figure=cont_fig, measured="; ".join(parts) + ".",
                note="" if cont_ok else "The trained nets' error does not fall by the pre-registered "
                                        "factor: with a fixed training budget, optimisation limits the "
                                        "wide nets before expressivity does.",
                details={"errors": {f: {w: v.tolist() for w, v in d.items()} for f, d in table.items()}}),
        replace(STEP, passed=step_ok, figure=step_fig, measured=step_text,
                note="" if step_ok else "See the figure: the criterion's mean-error bound or sup-error "
                                        "floor is not met by the trained nets."),
    ]


def _plot_errors(ax, by_width: dict[int, np.ndarray], title: str) -> None:
    widths = sorted(by_width)
    for col, label, style in ((0, "sup error", "o-"), (1, "mean |error|", "s--")):
        values = [by_width[w][:, col] for w in widths]
        median = np.array([np.median(v) for v in values])
        lower, upper = np.array([v.min() for v in values]), np.array([v.max() for v in values])
        line, = ax.plot(widths, median, style, label=f"{label}: median over seeds")
        ax.fill_between(widths, lower, upper, color=line.get_color(), alpha=0.2,
                        label=f"{label}: min-max over seeds")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if widths:
        ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("hidden units (width)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
