"""Exploding gradients above the critical init, divergence at a large learning rate, clipping as the rescue.

The sweep (conf/experiment/exploding.yaml): relu and tanh MLPs, 128 units, depth {5, 10, 20} hidden
layers, LeCun-normal weights times 2 (sw2 = n Var[W] = 4; critical is 2 for relu, 1 for tanh), zero
biases, plain SGD with lr {0.01, 0.1, 1} and global-norm clipping {off, 1}, 100 steps of minibatch 64,
seeds {0, 1, 2}: 108 runs.

Theory, fixed before running (``testbed.theory``, q^1 = sw2 mean(x^2), mean(x^2) = 0.94):
- relu: chi_1 = sw2 / 2 = 2 at every q, so ||dL/ds^l|| / ||dL/ds^{l+1}|| = sqrt(2) and the first/top
  hidden-layer ratio is 2^((D-1)/2): 4.0, 22.6, 724 at D = 5, 10, 20;
- tanh: chi_1(q^l) from the q-map (q* = 2.12, chi_1* = 1.36): 1.55, 3.36, 15.8.
- Divergence: relu is positively homogeneous, so a large step that grows the weights grows the output
  multiplicatively across layers (a runaway); tanh's hidden activations are bounded by 1, so only the
  output layer can grow, and only linearly in the number of steps (||Delta W^L|| <= lr ||p - y|| ||a||
  per step): within 100 steps its loss cannot pass the divergence ceiling (1e4 x the initial loss).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from testbed.experiments.base import (
    Claim,
    explain_failures,
    figure_path,
    group_by,
    mark_smoke,
    pyplot,
    save_figure,
)
from testbed.experiments.measure import fmt, fraction, geomean, initial_loss, layer_profile, number, series
from testbed.theory import predicted_grad_norm_ratios

NAME = "exploding"
SMOKE = ["model.depth=2,3", "model.width=16", "optim.lr=1.0", "seed=0", "train.steps=4", "train.log_every=2"]

THEORY_FACTOR = 2.0   # measured first/top ratio within x/ 2 of the mean-field value (width 128, 3 seeds)
LARGE_LR = 1.0        # the grid's largest rate
DIVERGED_SHARE = 2 / 3

SETUP = ("digits, {act} MLP, 128 units, LeCun-normal x 2 (sw2 = 4), zero biases, SGD, minibatch 64, "
         "100 steps, 3 seeds")

CLAIMS = [
    Claim(NAME, "Exploding gradients (Schoenholz et al. 2017; Glorot & Bengio 2010, Sec. 4.2.1)",
          SETUP.format(act="relu and tanh") + "; depth 5, 10, 20; ||dL/ds^l|| at init",
          "above the critical init (chi_1 > 1) the back-propagated gradient grows towards the input, "
          "by sqrt(chi_1) per layer, so more with depth",
          f"for each activation and depth the seed geometric mean of ||dL/ds^1|| / ||dL/ds^top|| is > 1, "
          f"within x/ {THEORY_FACTOR} of the mean-field value (relu 4.0, 22.6, 724; tanh 1.55, 3.36, 15.8), "
          "and increases with depth"),
    Claim(NAME, "Divergence at a large learning rate (Bengio et al. 1994; Pascanu et al. 2013)",
          SETUP.format(act="relu and tanh") + f"; lr = {LARGE_LR}, no clipping",
          "with exploding gradients a large learning rate makes the loss blow up",
          "relu: >= 2/3 of the seeds diverge (loss non-finite or > 1e4 x initial) at every depth; "
          "tanh (bounded hidden units, the output layer grows only linearly): no seed diverges"),
    Claim(NAME, "Global-norm gradient clipping (Pascanu, Mikolov, Bengio 2013)",
          SETUP.format(act="relu and tanh") + "; clip_norm = 1 at the same rates; test loss at init "
          "(recomputed with the engine) and at the end",
          "rescaling the gradient to a maximum global norm prevents the blow-up and training proceeds",
          "in every (activation, depth, lr) cell where >= 2/3 of the unclipped seeds diverge, >= 2/3 of "
          "the clipped seeds complete and end with a test loss below their initial test loss"),
]


def _sw2(run) -> float:
    return float(run.get("model.init_scale")) ** 2  # lecun_normal: Var[W] = 1 / fan_in, times scale^2


def predicted_first_top_ratio(run, x_train: np.ndarray) -> float:
    from testbed.data import BatchSampler

    sampler = BatchSampler(len(x_train), int(run.get("data.batch_size")), seed=int(run.get("seed")))
    batch = x_train[sampler.next()]  # the minibatch of the run's step 0
    q1 = _sw2(run) * float(np.mean(batch**2))
    ratios = predicted_grad_norm_ratios(q1, int(run.get("model.depth")), _sw2(run), 0.0,
                                        str(run.get("model.activation")))
    return float(np.prod(ratios))


def _first_top(run) -> float:
    depth = int(run.get("model.depth"))
    profile = layer_profile(run, "grad_norm/s", 0, range(1, depth + 1))
    return profile[0] / profile[-1]


def _initial_test_loss(run) -> float:
    """Test loss at init, in float64 whatever the run's dtype."""
    return initial_loss(run, "test")


def _final_test_loss(run) -> float:
    if run.status != "completed":
        return math.nan
    return number(run.summary.get("final/test_loss"))


def analyse(runs, figures_dir: Path, smoke: bool = False) -> list[Claim]:
    from testbed.data import load_dataset

    data = load_dataset("digits")
    runs = [r for r in runs if r.finished and r.metrics]
    claims = [replace(c) for c in CLAIMS]
    activations = sorted({str(r.get("model.activation")) for r in runs})
    depths = sorted({int(r.get("model.depth")) for r in runs})
    lrs = sorted({float(r.get("optim.lr")) for r in runs})
    large_lr = LARGE_LR if LARGE_LR in lrs else max(lrs)

    # -- E1: growth at init (the init depends on (activation, depth, seed) only: one run per seed)
    init_runs = {}
    for run in runs:
        init_runs.setdefault((str(run.get("model.activation")), int(run.get("model.depth")),
                              int(run.get("seed"))), run)
    growth = {}
    for (activation, depth, _seed), run in init_runs.items():
        growth.setdefault((activation, depth), []).append(run)
    table, ok = [], bool(growth)
    for activation in activations:
        previous = 0.0
        for depth in depths:
            group = growth.get((activation, depth), [])
            measured = [_first_top(r) for r in group]
            centre = geomean(measured)
            predicted = geomean([predicted_first_top_ratio(r, data.x_train) for r in group])
            within = max(centre / predicted, predicted / centre) <= THEORY_FACTOR
            ok = ok and centre > 1 and within and centre > previous
            previous = centre
            table.append((activation, depth, centre, min(measured), max(measured), predicted))
    claims[0].measured = "first/top ratio measured (seed range) vs predicted: " + "; ".join(
        f"{a} depth {d}: {fmt(c)} ({fmt(lo)}-{fmt(hi)}) vs {fmt(p)}" for a, d, c, lo, hi, p in table)
    claims[0].passed = ok if all(math.isfinite(t[2]) for t in table) else None
    claims[0].figure = _plot_growth(growth, depths, activations, data.x_train, figures_dir)

    # -- E2: divergence at the large rate, unclipped
    cells = group_by(runs, "model.activation", "model.depth", "optim.lr", "optim.clip_norm")
    share = {(a, d): fraction(r.status == "diverged" for r in cells.get((a, d, large_lr, None), []))
             for a in activations for d in depths}
    relu_ok = "relu" in activations and all(share.get(("relu", d), 0) >= DIVERGED_SHARE for d in depths)
    tanh_ok = "tanh" in activations and all(share.get(("tanh", d), 1) == 0 for d in depths)
    steps_to = {a: [r.summary.get("diverged_at_step") for d in depths
                    for r in cells.get((a, d, large_lr, None), []) if r.status == "diverged"]
                for a in activations}
    claims[1].measured = (f"share of seeds diverged at lr {fmt(large_lr)} without clipping: " + "; ".join(
        f"{a} depth {d}: {share[(a, d)]:.2f}" for a in activations for d in depths) + ". Diverged at steps: "
        + "; ".join(f"{a} {sorted(s)}" for a, s in steps_to.items() if s))
    if "tanh" in activations:  # how the bounded net fails instead (not part of the criterion)
        def tanh_final(d, clip):
            return _join(_final_test_loss(r) for r in cells.get(("tanh", d, large_lr, clip), []))

        claims[1].measured += (f". tanh at lr {fmt(large_lr)}, final test loss without / with clipping: "
                               + "; ".join(f"depth {d}: {tanh_final(d, None)} / {tanh_final(d, 1.0)}"
                                           for d in depths))
    claims[1].passed = relu_ok and tanh_ok
    claims[1].figure = _plot_divergence(cells, activations, depths, lrs, figures_dir)

    # -- E3: clipping rescues where unclipped runs diverge
    rescued, checked = [], []
    for a in activations:
        for d in depths:
            for lr in lrs:
                unclipped = cells.get((a, d, lr, None), [])
                clipped = [r for key, group in cells.items() if key[:3] == (a, d, lr) and key[3] is not None
                           for r in group]
                if not unclipped or fraction(r.status == "diverged" for r in unclipped) < DIVERGED_SHARE:
                    continue
                good = [r.status == "completed" and _final_test_loss(r) < _initial_test_loss(r)
                        for r in clipped]
                checked.append((a, d, lr, fraction(good), [_final_test_loss(r) for r in clipped],
                                [number(r.summary.get("final/test_acc")) for r in clipped],
                                [_initial_test_loss(r) for r in clipped]))
                rescued.append(bool(good) and fraction(good) >= DIVERGED_SHARE)
    claims[2].measured = (f"{len(checked)} cells with >= 2/3 unclipped seeds diverged; clipped share that "
                          "completed below the initial test loss: " + "; ".join(
                              f"{a} depth {d} lr {fmt(lr)}: {s:.2f} (test loss {_join(il)} -> {_join(fl)}, "
                              f"final acc {_join(acc)})" for a, d, lr, s, fl, acc, il in checked)
                          if checked else "no cell had >= 2/3 unclipped seeds diverged")
    claims[2].passed = all(rescued) if checked else None
    claims[2].figure = _plot_clipping(cells, activations, depths, large_lr, figures_dir)
    if not checked:
        claims[2].note = "Not evaluable: no unclipped cell diverged, so there was nothing to rescue."
    weak = [(a, d, lr, float(np.mean(acc))) for a, d, lr, _, _, acc, _ in checked if np.mean(acc) < 0.5]
    if weak and not smoke:
        claims[2].note = ("Clipping removes the blow-up everywhere, but it does not make every net train "
                          "within 100 steps: mean final test accuracy stays below 0.5 for " + "; ".join(
                              f"{a} depth {d} lr {fmt(lr)} ({acc:.2f})" for a, d, lr, acc in weak)
                          + " (the deepest nets start with a loss of order 1e2-1e3 and are still "
                          "descending).")

    if smoke:
        mark_smoke(claims)
    else:
        why = {0: "The mean-field prediction assumes infinite width; at 128 units and 20 layers the "
                  "product of per-layer fluctuations can leave the x/ 2 band.",
               1: "See the figure: the runs did not split by activation as the bounded-activation argument "
                  "predicts.",
               2: "Clipping caps each step's size, not the curvature it lands in; where it did not rescue, "
                  "a unit-norm step was still too large for this init."}
        explain_failures(claims, why)
    return claims


def _join(values) -> str:
    return ", ".join(fmt(v) for v in values)


# ---------------------------------------------------------------- figures
def _plot_growth(growth, depths, activations, x_train, figures_dir) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(activations), figsize=(5.5 * len(activations), 4), squeeze=False)
    colors = plt.cm.plasma(np.linspace(0.1, 0.8, len(depths)))
    for ax, activation in zip(axes[0], activations, strict=True):
        for color, depth in zip(colors, depths, strict=True):
            group = growth.get((activation, depth), [])
            if not group:
                continue
            layers = np.arange(1, depth + 1)
            profiles = np.array([layer_profile(r, "grad_norm/s", 0, layers) for r in group])
            profiles = profiles / profiles[:, -1:]
            ax.plot(layers, np.exp(np.mean(np.log(profiles), 0)), "o-", ms=3, color=color,
                    label=f"{depth} hidden layers")
            ax.fill_between(layers, profiles.min(0), profiles.max(0), color=color, alpha=0.2)
            run = group[0]
            from testbed.data import BatchSampler

            batch = x_train[BatchSampler(len(x_train), int(run.get("data.batch_size")),
                                         seed=int(run.get("seed"))).next()]
            ratios = predicted_grad_norm_ratios(_sw2(run) * float(np.mean(batch**2)), depth, _sw2(run), 0.0,
                                                activation)
            ax.plot(layers, np.append(np.cumprod(ratios[::-1])[::-1], 1.0), "k--", lw=1,
                    label="mean-field theory" if depth == depths[0] else None)
        ax.set_yscale("log")
        ax.set_xlabel("hidden layer l (1 = next to the input)")
        ax.set_ylabel("||dL/ds^l|| / ||dL/ds^top||  (log)")
        ax.set_title(f"{activation}, sw2 = 4 (above critical), at init", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Back-propagated gradient by layer above the critical init (band: 3 seeds min-max)",
                 fontsize=9)
    return save_figure(fig, figure_path(figures_dir, "exploding_growth"))


def _plot_divergence(cells, activations, depths, lrs, figures_dir) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(activations), figsize=(5.5 * len(activations), 3.8), squeeze=False,
                             sharey=True)
    markers = dict(zip(depths, "osd^v", strict=False))
    for ax, activation in zip(axes[0], activations, strict=True):
        for clip, color in ((None, "tab:red"), (1.0, "tab:blue")):
            for depth in depths:
                shares = [fraction(r.status == "diverged"
                                   for r in cells.get((activation, depth, lr, clip), [])) for lr in lrs]
                offset = 0.015 * (depths.index(depth) - 1) + (0.005 if clip else 0.0)  # keep lines apart
                ax.plot(lrs, np.add(shares, offset), "-", marker=markers[depth], color=color, alpha=0.8,
                        label=f"{'no clipping' if clip is None else 'clip_norm = 1'}, {depth} layers")
        ax.set_xscale("log")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("learning rate (SGD)")
        ax.set_title(f"{activation}, sw2 = 4", fontsize=9)
    axes[0][0].set_ylabel("share of seeds diverged")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Runs that diverged (loss non-finite or > 1e4 x initial) against the learning rate",
                 fontsize=9)
    return save_figure(fig, figure_path(figures_dir, "exploding_divergence"))


def _plot_clipping(cells, activations, depths, lr, figures_dir) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(len(activations), len(depths), figsize=(4 * len(depths), 3.2 * len(activations)),
                             squeeze=False)
    for i, activation in enumerate(activations):
        for j, depth in enumerate(depths):
            ax = axes[i][j]
            for clip, color in ((None, "tab:red"), (1.0, "tab:blue")):
                for k, run in enumerate(cells.get((activation, depth, lr, clip), [])):
                    steps, loss = series(run, "train/loss")
                    label = ("no clipping" if clip is None else "clip_norm = 1") if k == 0 else None
                    ax.plot(steps, np.clip(loss, 1e-3, 1e12), color=color, alpha=0.7, label=label)
                    if run.status == "diverged":
                        ax.plot(steps[-1], np.clip(loss[-1], 1e-3, 1e12) if math.isfinite(loss[-1]) else 1e12,
                                "x", color=color, ms=8)
            ax.set_yscale("log")
            ax.set_title(f"{activation}, {depth} layers, lr {fmt(lr)}", fontsize=8)
            ax.set_xlabel("step")
            ax.set_ylabel("minibatch training loss (log)")
            ax.legend(fontsize=7)
    fig.suptitle("Training loss at the large rate, with and without global-norm clipping "
                 "(x: diverged, non-finite shown at 1e12; one line per seed)", fontsize=9)
    return save_figure(fig, figure_path(figures_dir, "exploding_clipping"))
