"""How a learning rate fails, per optimiser: too large diverges, too small is slow.

The sweep (conf/experiment/lr_failure.yaml): a 2 x 128 ReLU MLP (He init, zero biases) on the digits,
200 steps of minibatch 64, optimisers SGD, SGD + momentum 0.9, AdaGrad, RMSProp, Adam at every decade of
the learning rate from 1e-5 to 10, seeds {0, 1, 2}: 105 runs.

Expectations, fixed before running: a step of 10 (SGD: lr x gradient with a gradient of order 1; the
adaptive methods: about lr per coordinate on their first steps) throws a relu net's weights far out, and
because relu is positively homogeneous the logits grow multiplicatively: the loss leaves every bound
(the run loop's divergence test: non-finite, or > 1e4 x the initial loss). At 1e-5 the first-order
decrease over 200 steps is at most about lr x steps x ||g||^2 (SGD) or lr x steps x ||g||_1 (Adam): a
few percent of the loss, while a good rate takes it from ~2.3 to ~0.1.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from testbed.experiments.base import Claim, explain_failures, figure_path, mark_smoke, pyplot, save_figure
from testbed.experiments.measure import (
    best_rates,
    by_optimiser_and_rate,
    eval_series,
    fmt,
    fraction,
    initial_loss,
    number,
)

NAME = "lr_failure"
SMOKE = ["optim=sgd,adam", "optim.lr=0.00001,0.1,10.0", "seed=0", "model.width=16", "train.steps=4",
         "train.log_every=2"]

OPTIMISERS = ("sgd", "momentum", "adagrad", "rmsprop", "adam")
LABEL = {"sgd": "SGD", "momentum": "SGD + momentum", "adagrad": "AdaGrad", "rmsprop": "RMSProp",
         "adam": "Adam"}
COLORS = {"sgd": "tab:gray", "momentum": "tab:orange", "adagrad": "tab:green", "rmsprop": "tab:purple",
          "adam": "tab:blue"}
TOO_LARGE, TOO_SMALL = 10.0, 1e-5
DIVERGED_SHARE = 2 / 3
SLOW_FRACTION = 0.25   # too small: falls by less than a quarter of what the best rate achieves
GOOD_ACC = 0.9         # a good rate: every seed completes with test accuracy >= 0.9

SETUP = "digits, MLP 2 x 128 ReLU, He init, minibatch 64, 200 steps, lr 1e-5..10 per decade, 3 seeds"

CLAIMS = [
    Claim(NAME, "Too large a learning rate (LeCun et al. 1998, 'Efficient BackProp', Sec. 5)",
          SETUP + f"; lr = {fmt(TOO_LARGE)}",
          "above a critical step size (2 / largest Hessian eigenvalue for gradient descent) the iterates "
          "diverge",
          f"for each of the five optimisers >= 2/3 of the seeds at lr {fmt(TOO_LARGE)} end with status "
          "'diverged' (loss non-finite or > 1e4 x initial)"),
    Claim(NAME, "Too small a learning rate (LeCun et al. 1998, Sec. 5)",
          SETUP + f"; lr = {fmt(TOO_SMALL)}; full test-set loss at init (recomputed with the engine) and at "
          "the end",
          "a step size far below the critical one converges, but slowly",
          f"for each optimiser at lr {fmt(TOO_SMALL)} every seed completes, its test loss falls, and by less "
          f"than {SLOW_FRACTION} of the fall at that optimiser's best rate (lowest mean final test loss)"),
    Claim(NAME, "A working range in between (per optimiser)",
          SETUP,
          "between the two failures each optimiser has rates that train",
          f"each optimiser has a grid rate where every seed completes with test accuracy >= {GOOD_ACC}"),
]


def _optimiser(run) -> str:
    name = str(run.get("optim.name"))
    if name == "sgd":
        return "momentum" if float(run.get("optim.momentum") or 0) > 0 else "sgd"
    return name


def _initial(run) -> float:
    """Test loss at init, in float64 whatever the run's dtype."""
    return initial_loss(run, "test")


def _final(run) -> float:
    return number(run.summary.get("final/test_loss")) if run.status == "completed" else math.inf


def analyse(runs, figures_dir: Path, smoke: bool = False) -> list[Claim]:
    runs = [r for r in runs if r.finished and r.metrics]
    claims = [replace(c) for c in CLAIMS]
    by, optimisers, lrs = by_optimiser_and_rate(runs, _optimiser, OPTIMISERS)
    large, small = max(lrs), min(lrs)
    best = best_rates(by, optimisers, lrs, _final)

    # -- L1: too large diverges
    shares = {o: fraction(r.status == "diverged" for r in by.get((o, large), [])) for o in optimisers}
    at_step = {o: [r.summary.get("diverged_at_step") for r in by.get((o, large), [])
                   if r.status == "diverged"] for o in optimisers}
    claims[0].measured = f"share diverged at lr {fmt(large)}: " + "; ".join(
        f"{LABEL[o]} {shares[o]:.2f} (at steps {sorted(at_step[o])})" for o in optimisers)
    claims[0].passed = bool(shares) and all(s >= DIVERGED_SHARE for s in shares.values())
    claims[0].figure = _plot_final(by, optimisers, lrs, figures_dir)

    # -- L2: too small is slow, not broken
    parts, ok, missed = [], bool(optimisers), []
    for o in optimisers:
        group = by.get((o, small), [])
        best_fall = (np.mean([_initial(r) - _final(r) for r in by[(o, best[o])]]) if o in best else math.nan)
        falls = [_initial(r) - _final(r) for r in group]
        good = (bool(group) and all(r.status == "completed" for r in group) and all(f > 0 for f in falls)
                and all(f < SLOW_FRACTION * best_fall for f in falls))
        ok = ok and good
        if not good:
            missed.append(o)
        parts.append(f"{LABEL[o]}: fall {', '.join(fmt(f) for f in falls)} vs {fmt(best_fall)} at best lr "
                     f"{fmt(best.get(o, math.nan))} "
                     f"({fmt(max(falls) / best_fall if falls else math.nan)} of it)")
    claims[1].measured = f"test-loss fall over 200 steps at lr {fmt(small)}: " + "; ".join(parts)
    claims[1].passed = ok
    if missed and not smoke:
        rmsprop_why = (" RMSProp (as torch's) has no bias correction: its running mean of g^2 starts at 0, "
                       "so its first steps are up to 1/sqrt(1 - alpha) = 10 times lr per coordinate, and at "
                       "lr 1e-5 it covers far more ground than the rate suggests.")
        claims[1].note = (f"Missed by {', '.join(LABEL[o] for o in missed)}; the others are slow as expected."
                          + (rmsprop_why if "rmsprop" in missed else ""))
    claims[1].figure = _plot_curves(by, optimisers, small, best, large, figures_dir)

    # -- L3: a working range
    good_rates = {o: [lr for lr in lrs if (o, lr) in by and all(r.status == "completed" for r in by[(o, lr)])
                      and all(number(r.summary.get("final/test_acc")) >= GOOD_ACC for r in by[(o, lr)])]
                  for o in optimisers}
    claims[2].measured = "rates where every seed reaches test accuracy >= 0.9: " + "; ".join(
        f"{LABEL[o]} {', '.join(fmt(lr) for lr in good_rates[o]) or 'none'}" for o in optimisers)
    claims[2].passed = bool(good_rates) and all(good_rates.values())
    claims[2].figure = claims[0].figure

    if smoke:
        mark_smoke(claims)
    else:
        why = {0: "Some optimiser's largest-rate runs stayed finite and under the divergence ceiling: they "
                  "failed by stalling (dead or saturated units, a huge but bounded loss) rather than by "
                  "blowing up; the figure shows their final loss.",
               1: "At the smallest rate an optimiser either did not reduce the loss at all or reduced it by "
                  "more than a quarter of its best rate's fall (see the per-optimiser numbers).",
               2: "An optimiser had no rate on the decade grid at which all seeds reached 90% test accuracy "
                  "within 200 steps."}
        explain_failures(claims, why)
    return claims


# ---------------------------------------------------------------- figures
def _plot_final(by, optimisers, lrs, figures_dir) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ceiling = 100.0
    for k, o in enumerate(optimisers):
        xs, centre, low, high, diverged = [], [], [], [], []
        jitter = 10 ** ((k - 2) * 0.03)
        for lr in lrs:
            group = by.get((o, lr), [])
            if not group:
                continue
            finals = np.array([_final(r) for r in group])
            if np.any(~np.isfinite(finals)):
                diverged.append(lr * jitter)
            finite = finals[np.isfinite(finals)]
            if finite.size:
                xs.append(lr * jitter)
                centre.append(float(np.mean(finite)))
                low.append(float(finite.min()))
                high.append(float(finite.max()))
        yerr = np.maximum(0.0, [np.subtract(centre, low), np.subtract(high, centre)])  # rounding: >= 0
        ax.errorbar(xs, centre, yerr=yerr, fmt="o-", ms=4,
                    capsize=2, color=COLORS[o], label=LABEL[o])
        if diverged:
            ax.plot(diverged, [ceiling] * len(diverged), "x", color=COLORS[o], ms=10, mew=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"final test loss (log; x at {fmt(ceiling)}: diverged)")
    ax.set_title("Final test loss against the learning rate, per optimiser (completed seeds: mean, min-max)",
                 fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, figure_path(figures_dir, "lr_failure_final_loss"))


def _plot_curves(by, optimisers, small, best, large, figures_dir) -> str:
    plt = pyplot()
    columns = min(3, len(optimisers))
    rows = math.ceil(len(optimisers) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(optimisers):]:
        ax.axis("off")
    for ax, o in zip(axes.flat, optimisers, strict=False):
        for lr, color, what in ((small, "tab:cyan", "too small"), (best.get(o), "tab:green", "best"),
                                (large, "tab:red", "too large")):
            for k, run in enumerate(by.get((o, lr), [])):
                steps, loss = eval_series(run, "test/loss")
                if run.status == "diverged":
                    ax.plot(run.summary.get("diverged_at_step", steps[-1] if steps.size else 0), 50, "x",
                            color=color, ms=8, mew=2)
                ax.plot(steps, loss, color=color, alpha=0.7,
                        label=f"{what}: lr {fmt(lr)}" if k == 0 else None)
        ax.set_yscale("log")
        ax.set_ylim(1e-2, 1e2)
        ax.set_xlabel("optimiser steps taken")
        ax.set_title(LABEL[o], fontsize=9)
        ax.legend(fontsize=6)
    for row in axes:
        row[0].set_ylabel("full test-set loss (log; x = diverged)")
    fig.suptitle("Test loss during training at the smallest, the best and the largest rate "
                 "(one line per seed)",
                 fontsize=9)
    return save_figure(fig, figure_path(figures_dir, "lr_failure_curves"))
