"""He et al. 2015, Figs. 2-3: He init trains a deep ReLU net, Xavier stalls at 30 layers; Adam for contrast.

Two sweeps (conf/experiment/he_vs_xavier.yaml and the same with ``optim=adam optim.lr=0.001``): ReLU
MLPs of 22 and 30 hidden layers x 64 units on the digits, zero biases, He (kaiming_normal, std
sqrt(2/n)) or Xavier (xavier_normal, std sqrt(1/n) at equal widths) init, SGD + momentum 0.9 at lr 0.01
(the paper's solver), or Adam at 1e-3; 600 steps of minibatch 64, seeds {0, 1, 2}.

Theory, fixed before running: for relu chi_1 = sw2 / 2 at every q, so per layer ||dL/ds^l|| /
||dL/ds^{l+1}|| = sqrt(sw2 / 2): 1 for He (sw2 = 2), 1/sqrt(2) for Xavier (sw2 = 1); the forward signal
shrinks the same way. At 30 layers Xavier's first/top gradient ratio is 2^(-29/2) = 4.3e-5 and the output
carries 2^(-15) of the input's scale: SGD sees almost no gradient below the top layers and almost no
signal at the output. Adam divides each coordinate's step by its gradient's running RMS, so the scale of
the gradient does not set the step: it trains the same net.
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
    mark_smoke,
    pyplot,
    run_preset,
    save_figure,
)
from testbed.experiments.measure import eval_series, fmt, fraction, geomean, layer_profile, number, series

NAME = "he_vs_xavier"
SMOKE = ["model.depth=3,4", "model.width=16", "seed=0", "train.steps=4", "train.log_every=2"]
ADAM = ["optim=adam", "optim.lr=0.001"]

TRAINS_ACC = 0.8      # "converges": final test accuracy >= 0.8 (chance 0.1)
STALLS_ACC = 0.2      # "stalls": final test accuracy <= 0.2
STARTED_ACC = 0.5     # "starts reducing error": first logged step with test accuracy >= 0.5
SHARE = 2 / 3         # of the seeds
THEORY_FACTOR = 2.0

INIT_LABEL = {"kaiming_normal": "He (std sqrt(2/n))", "xavier_normal": "Xavier (std sqrt(1/n))"}
COLORS = {"kaiming_normal": "tab:green", "xavier_normal": "tab:red"}

SETUP = ("digits, ReLU MLP {depth} hidden x 64, zero biases, {optim}, minibatch 64, 600 steps, 3 seeds")
SGD = "SGD + momentum 0.9, lr 0.01"

CLAIMS = [
    Claim(NAME, "He et al. 2015, Sec. 2.2 (and mean-field theory)",
          SETUP.format(depth="22 and 30", optim=SGD) + "; ||dL/ds^l|| at init",
          "relu: Var[y_l] = 1/2 n_l Var[w_l] Var[y_(l-1)]; std sqrt(2/n) keeps it, std sqrt(1/n) halves it "
          "every layer",
          f"seed geometric mean of ||dL/ds^1|| / ||dL/ds^top|| within x/ {THEORY_FACTOR} of 1 (He) and of "
          "2^(-(D-1)/2) (Xavier: 1.0e-3 at 22, 4.3e-5 at 30)"),
    Claim(NAME, "He et al. 2015, Fig. 3",
          SETUP.format(depth=30, optim=SGD),
          "30 layers: with Xavier init training completely stalls; with He init it converges",
          f"in >= 2/3 of the seeds He ends with test accuracy >= {TRAINS_ACC} and Xavier with "
          f"<= {STALLS_ACC} "
          "(chance 0.1)"),
    Claim(NAME, "He et al. 2015, Fig. 2",
          SETUP.format(depth=22, optim=SGD),
          "22 layers: both inits converge, He starts reducing the error earlier",
          f"both inits reach test accuracy >= {STARTED_ACC} in >= 2/3 of the seeds, and He's median first "
          f"step with accuracy >= {STARTED_ACC} is earlier than Xavier's"),
    Claim(NAME, "Kingma & Ba 2014 / claims.md (contrast)",
          SETUP.format(depth=30, optim="Adam, lr 1e-3"),
          "the 30-layer stall of Xavier-initialised ReLU nets shows with SGD + momentum; Adam trains the "
          "same net",
          f"Xavier with Adam ends with test accuracy >= {TRAINS_ACC} in >= 2/3 of the seeds"),
]


def compute(out_dir: Path, smoke: bool = False):
    """The SGD + momentum sweep (the yaml's) and the same sweep with Adam; all runs in one list."""
    if smoke:  # one in-process toy sweep over both optimisers (each at its group's default rate)
        return run_preset(NAME, Path(out_dir) / "smoke", [*SMOKE, "optim=momentum,adam"], n_jobs=1)
    runs = run_preset(NAME, Path(out_dir) / "momentum")
    runs += run_preset(NAME, Path(out_dir) / "adam", ADAM)
    return runs


def _optim(run) -> str:
    return "adam" if str(run.get("optim.name")) == "adam" else "momentum"


def _final_acc(run) -> float:
    return number(run.summary.get("final/test_acc")) if run.status == "completed" else 0.0


def _first_step(run, level: float) -> float:
    steps, acc = eval_series(run, "test/acc")
    hit = np.nonzero(acc >= level)[0]
    return float(steps[hit[0]]) if hit.size else math.inf


def _peak_acc(run) -> float:
    _, acc = series(run, "test/acc")
    return float(np.nanmax(acc)) if acc.size else math.nan


def _first_top(run) -> float:
    depth = int(run.get("model.depth"))
    profile = layer_profile(run, "grad_norm/s", 0, range(1, depth + 1))
    return profile[0] / profile[-1]


def analyse(runs, figures_dir: Path, smoke: bool = False) -> list[Claim]:
    runs = [r for r in runs if r.finished and r.metrics]
    claims = [replace(c) for c in CLAIMS]
    cells = {}
    for run in runs:
        key = (_optim(run), int(run.get("model.depth")), str(run.get("model.init")))
        cells.setdefault(key, []).append(run)
    depths = sorted({int(r.get("model.depth")) for r in runs})
    shallow, deep = depths[0], depths[-1]

    def cell(optim, depth, init):
        return cells.get((optim, depth, init), [])

    # -- H0: gradient profile at init against sqrt(sw2 / 2) per layer
    rows, ok = [], True
    for depth in depths:
        for init, sw2 in (("kaiming_normal", 2.0), ("xavier_normal", 1.0)):
            measured = [_first_top(r) for r in cell("momentum", depth, init)]
            predicted = (sw2 / 2) ** ((depth - 1) / 2)
            centre = geomean(measured)
            ok = ok and max(centre / predicted, predicted / centre) <= THEORY_FACTOR
            rows.append((depth, init, centre, predicted, measured))
    claims[0].measured = "measured vs theory: " + "; ".join(
        f"{'He' if i == 'kaiming_normal' else 'Xavier'} depth {d}: {fmt(c)} (seeds {_join(m)}) vs {fmt(p)}"
        for d, i, c, p, m in rows)
    claims[0].passed = ok if all(math.isfinite(r[2]) for r in rows) else None
    claims[0].figure = _plot_init(cells, depths, figures_dir)

    # -- H1: 30 layers, SGD + momentum
    he = [_final_acc(r) for r in cell("momentum", deep, "kaiming_normal")]
    xa = [_final_acc(r) for r in cell("momentum", deep, "xavier_normal")]
    claims[1].setup = claims[1].setup.replace("30 hidden", f"{deep} hidden")
    he_peak = [_peak_acc(r) for r in cell("momentum", deep, "kaiming_normal")]
    xa_peak = [_peak_acc(r) for r in cell("momentum", deep, "xavier_normal")]
    claims[1].measured = (f"final test accuracy, He: {_join(he)}; Xavier: {_join(xa)}. Best over the logged "
                          f"steps (not the criterion), He: {_join(he_peak)}; Xavier: {_join(xa_peak)}")
    claims[1].passed = (bool(he) and bool(xa) and fraction(a >= TRAINS_ACC for a in he) >= SHARE
                        and fraction(a <= STALLS_ACC for a in xa) >= SHARE)
    claims[1].figure = _plot_training(cells, depths, "momentum", figures_dir, "he_vs_xavier_sgd",
                                      "SGD + momentum 0.9, lr 0.01")

    # -- H2: 22 layers, both converge, He first
    he_steps = [_first_step(r, STARTED_ACC) for r in cell("momentum", shallow, "kaiming_normal")]
    xa_steps = [_first_step(r, STARTED_ACC) for r in cell("momentum", shallow, "xavier_normal")]
    he_acc = [_final_acc(r) for r in cell("momentum", shallow, "kaiming_normal")]
    xa_acc = [_final_acc(r) for r in cell("momentum", shallow, "xavier_normal")]
    both = (bool(he_steps) and bool(xa_steps) and fraction(math.isfinite(s) for s in he_steps) >= SHARE
            and fraction(math.isfinite(s) for s in xa_steps) >= SHARE)
    earlier = bool(he_steps) and bool(xa_steps) and float(np.median(he_steps)) < float(np.median(xa_steps))
    claims[2].setup = claims[2].setup.replace("22 hidden", f"{shallow} hidden")
    claims[2].measured = (f"first step with test accuracy >= {STARTED_ACC}: He {_steps(he_steps)}, Xavier "
                          f"{_steps(xa_steps)}; final test accuracy He {_join(he_acc)}, "
                          f"Xavier {_join(xa_acc)}")
    claims[2].passed = both and earlier
    claims[2].figure = claims[1].figure

    # -- H3: Adam trains Xavier at 30 layers
    adam_xa = [_final_acc(r) for r in cell("adam", deep, "xavier_normal")]
    adam_he = [_final_acc(r) for r in cell("adam", deep, "kaiming_normal")]
    claims[3].setup = claims[3].setup.replace("30 hidden", f"{deep} hidden")
    claims[3].measured = (f"final test accuracy with Adam, Xavier: {_join(adam_xa)}; He: {_join(adam_he)}. "
                          f"With SGD + momentum Xavier ended at {_join(xa)}")
    claims[3].passed = bool(adam_xa) and fraction(a >= TRAINS_ACC for a in adam_xa) >= SHARE
    claims[3].figure = _plot_training(cells, depths, "adam", figures_dir, "he_vs_xavier_adam",
                                      "Adam, lr 1e-3")

    if smoke:
        mark_smoke(claims)
    else:
        why = {0: "At 64 units the per-layer fluctuations of a relu net multiply over 20-30 layers; the "
                  "measured ratio left the x/ 2 band around the infinite-width value.",
               1: "See the figure: within 600 steps on the digits the 30-layer runs did not split into "
                  "'He trains, Xavier stalls' in enough seeds.",
               2: "The paper's 22-layer Xavier net converged after many ImageNet epochs; within our 600 "
                  "steps it did not (or He was not earlier), see the figure.",
               3: "Adam did not train the 30-layer Xavier net within 600 steps in enough seeds."}
        if claims[1].passed is False and xa and max(xa_peak) <= STALLS_ACC and min(he_peak, default=0) > 0.3:
            claims[1].note = (
                f"Half of the claim holds: Xavier never left chance (best test accuracy {fmt(max(xa_peak))} "
                f"over all logged steps, every seed). He trains, but slowly and unevenly at 30 x 64 with "
                f"SGD + momentum at the paper's lr 0.01 (best {_join(he_peak)}, final {_join(he)}): it does "
                f"not end at >= {TRAINS_ACC} in 2 of 3 seeds within 600 steps.")
        if claims[2].passed is False and earlier:
            claims[2].note = (
                f"He starts earlier as the paper says (accuracy >= {STARTED_ACC} at steps "
                f"{_steps(he_steps)}), but Xavier's 22-layer net, whose error only starts to fall late "
                "in the run (see the figure), does not reach it within 600 steps in 2 of 3 seeds: "
                "'both converge' needs a longer budget than ours.")
        if claims[3].passed is False and adam_xa and min(adam_xa) > max(xa + [STALLS_ACC]):
            claims[3].note = (
                f"Adam does move the net SGD leaves at chance (final accuracy {_join(adam_xa)} vs "
                f"{_join(xa)} with SGD + momentum), but not to >= {TRAINS_ACC} in 2 of 3 seeds within "
                "600 steps.")
        explain_failures(claims, why)
    return claims


def _join(values) -> str:
    return ", ".join(fmt(v) for v in values)


def _steps(values) -> str:
    return ", ".join("never" if not math.isfinite(v) else str(int(v)) for v in values)


# ---------------------------------------------------------------- figures
def _plot_init(cells, depths, figures_dir) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    styles = dict(zip(depths, ("-", "--"), strict=False))
    for depth in depths:
        for init, sw2 in (("kaiming_normal", 2.0), ("xavier_normal", 1.0)):
            group = cells.get(("momentum", depth, init), [])
            if not group:
                continue
            layers = np.arange(1, depth + 1)
            profiles = np.array([layer_profile(r, "grad_norm/s", 0, layers) for r in group])
            profiles = profiles / profiles[:, -1:]
            ax.plot(layers, np.exp(np.mean(np.log(profiles), 0)), styles[depth], color=COLORS[init],
                    label=f"{INIT_LABEL[init]}, {depth} layers")
            ax.fill_between(layers, profiles.min(0), profiles.max(0), color=COLORS[init], alpha=0.15)
            ax.plot(layers, (sw2 / 2) ** ((depth - layers) / 2), ":", color="k", lw=1,
                    label="theory (sw2/2)^((top-l)/2)" if (depth, init) == (depths[0], "kaiming_normal")
                    else None)
    ax.set_yscale("log")
    ax.set_xlabel("hidden layer l (1 = next to the input)")
    ax.set_ylabel("||dL/ds^l|| / ||dL/ds^top||  (log)")
    ax.set_title("ReLU at init: back-propagated gradient by layer, He vs Xavier (band: 3 seeds)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, figure_path(figures_dir, "he_vs_xavier_init"))


def _plot_training(cells, depths, optim, figures_dir, name, title) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(depths), figsize=(5.5 * len(depths), 3.8), squeeze=False, sharey=True)
    for ax, depth in zip(axes[0], depths, strict=True):
        for init in INIT_LABEL:
            group = cells.get((optim, depth, init), [])
            curves = [eval_series(r, "test/acc") for r in group]
            if not curves:
                continue
            n = min(len(c[1]) for c in curves)
            values = np.array([1 - c[1][:n] for c in curves])
            steps = curves[0][0][:n]
            ax.plot(steps, values.mean(0), color=COLORS[init], label=f"{INIT_LABEL[init]} (mean)")
            ax.fill_between(steps, values.min(0), values.max(0), color=COLORS[init], alpha=0.2)
        ax.axhline(0.9, color="k", ls=":", lw=1, label="chance (0.9)")
        ax.set_ylim(0, 1)
        ax.set_xlabel("optimiser steps taken (minibatch 64)")
        ax.set_title(f"{depth} hidden ReLU layers, {title}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("test error (band: 3 seeds min-max)")
    fig.suptitle(f"Test error during training, He vs Xavier init ({title})", fontsize=9)
    return save_figure(fig, figure_path(figures_dir, name))

