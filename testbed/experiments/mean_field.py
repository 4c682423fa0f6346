"""Mean-field signal propagation at init: measured slope of ln ||dL/ds^l|| against the theory's prediction.

The sweep (conf/experiment/mean_field.yaml): tanh and relu MLPs, 20 hidden layers x 512 units, on the
digits, W ~ N(0, sw2 / fan_in) (lecun_normal x sqrt(sw2)), zero biases (sb2 = 0), sw2 in {0.5, 1, 1.5, 2,
3, 4}, seeds {0, 1, 2}; no training: one forward and backward pass on a minibatch of 128, manual engine
and torch reference side by side (engine=both). 36 runs.

Prediction (``testbed.theory``): per link ||dL/ds^l|| / ||dL/ds^{l+1}|| = sqrt(chi_1(q^l)),
chi_1(q) = sw2 E_z[phi'(sqrt(q) z)^2] by Gauss-Hermite quadrature, with q^l iterated by the length map
from q^1 = sw2 mean(x^2) of the step-0 minibatch (the transient, not q*). The slope compared is the
least-squares slope of ln ||dL/ds^l|| against l over the 20 hidden layers, measured and predicted alike.

Tolerance, fixed before running: at width N = 512 one link's squared-norm ratio fluctuates by about
sqrt(2 / (N/2)) = 0.09 (relu; less for tanh), 0.044 in ln-norm; a line fitted to a 20-step random walk of
such steps has a slope error of about 0.044 sqrt(1.2 / 20) = 0.011 for one input, less over a minibatch
and 3 seeds: 0.03 per layer is three such errors.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from testbed.experiments.base import Claim, explain_failures, figure_path, mark_smoke, pyplot, save_figure
from testbed.experiments.measure import fmt, layer_profile, mean_std, number, slope
from testbed.theory import chi1, fixed_point, predicted_log_grad_norm_profile

NAME = "mean_field"
SMOKE = ["model.depth=4", "model.width=16", "model.init_scale=1.224744871391589,1.4142135623730951", "seed=0",
         "data.batch_size=16"]

SLOPE_TOLERANCE = 0.03        # |measured - predicted| per layer, in ln-norm
TRANSIENT_SW2 = 1.5           # claims.md: tanh, sw2 = 1.5 has chi_1* > 1 but a depth-20 ratio < 1
TRANSIENT_TOLERANCE = 0.2     # relative, on the squared-norm ratio

SETUP = "digits, {act}, 20 hidden x 512, W ~ N(0, sw2/n), zero biases, at init, minibatch 128, 3 seeds"

CLAIMS = [
    Claim(NAME, "Schoenholz et al. 2017, eq. 11 (Poole et al. 2016, eq. 3)",
          SETUP.format(act="tanh and relu") + "; sw2 in {0.5, 1, 1.5, 2, 3, 4}",
          "Var[dL/ds^l] = chi_1 Var[dL/ds^(l+1)]: ln ||dL/ds^l|| changes by 1/2 ln chi_1 per layer; relu: "
          "chi_1 = sw2/2 (He's sw2 = 2 is critical); tanh: ordered for sw2 <= 1, chaotic above",
          "for all 12 (activation, sw2) settings the seed-mean least-squares slope of ln ||dL/ds^l|| over "
          f"the 20 hidden layers is within {SLOPE_TOLERANCE} of the predicted slope (transient q-map from "
          "q^1)"),
    Claim(NAME, "claims.md / Schoenholz et al. 2017 (finite depth: the transient)",
          SETUP.format(act="tanh") + f"; sw2 = {TRANSIENT_SW2}",
          "tanh sw2 = 1.5 from q^1 = 1: depth-20 ratio ~0.80 although chi_1(q*) = 1.04 > 1, because "
          "chi_1(q^l) < 1 while q^l relaxes to q* = 0.287",
          f"measured ||dL/ds^1||^2 / ||dL/ds^20||^2 (seed mean) is < 1 and within "
          f"{TRANSIENT_TOLERANCE:.0%} of "
          "the transient prediction (product of chi_1(q^l)), while chi_1(q*)^19 (the fixed-point value) "
          "is > 1"),
]


def _sw2(run) -> float:
    return float(run.get("model.init_scale")) ** 2


def _q1(run, x_train) -> float:
    from testbed.data import BatchSampler

    sampler = BatchSampler(len(x_train), int(run.get("data.batch_size")), seed=int(run.get("seed")))
    return _sw2(run) * float(np.mean(x_train[sampler.next()] ** 2))


def measured_profile(run) -> np.ndarray:
    """ln ||dL/ds^l|| for the hidden layers l = 1..depth at init."""
    depth = int(run.get("model.depth"))
    return np.log(layer_profile(run, "grad_norm/s", 0, range(1, depth + 1)))


def predicted_profile(run, x_train) -> np.ndarray:
    return predicted_log_grad_norm_profile(_q1(run, x_train), int(run.get("model.depth")), _sw2(run), 0.0,
                                           str(run.get("model.activation")))


def _per_example_profiles(run, x_train) -> np.ndarray:
    """Predicted profiles (N, depth), one per example of the step-0 minibatch, from its own q^1."""
    from testbed.data import BatchSampler

    sampler = BatchSampler(len(x_train), int(run.get("data.batch_size")), seed=int(run.get("seed")))
    q1s = _sw2(run) * np.mean(x_train[sampler.next()] ** 2, axis=1)
    return np.array([predicted_log_grad_norm_profile(q1, int(run.get("model.depth")), _sw2(run), 0.0,
                                                     str(run.get("model.activation"))) for q1 in q1s])


def analyse(runs, figures_dir: Path, smoke: bool = False) -> list[Claim]:
    from testbed.data import load_dataset

    data = load_dataset("digits")
    runs = [r for r in runs if r.finished and r.metrics]
    claims = [replace(c) for c in CLAIMS]
    groups = {}
    for run in runs:
        groups.setdefault((str(run.get("model.activation")), round(_sw2(run), 6)), []).append(run)

    # -- MF1: slopes
    rows = []
    for (activation, sw2), group in sorted(groups.items()):
        measured = [slope(measured_profile(r)) for r in group]
        predicted = float(np.mean([slope(predicted_profile(r, data.x_train)) for r in group]))
        rows.append((activation, sw2, *mean_std(measured), predicted))
    worst = max(rows, key=lambda r: abs(r[2] - r[4])) if rows else None
    cmp = [number(r.summary.get("cmp/grad_max_rel_err_max")) for r in runs if r.summary]
    cmp = [c for c in cmp if math.isfinite(c)]
    claims[0].measured = (
        f"{len(rows)} settings; largest |measured - predicted| = {fmt(abs(worst[2] - worst[4]))} per layer "
        f"({worst[0]}, sw2 = {fmt(worst[1])}). Measured (mean +- std) vs predicted: " + "; ".join(
            f"{a} {fmt(s)}: {m:+.3f} +- {sd:.3f} vs {p:+.3f}" for a, s, m, sd, p in rows)
        + (f". Manual engine vs torch: largest relative gradient error {fmt(max(cmp))} over {len(cmp)} runs"
           if cmp else "")) if rows else "no runs"
    claims[0].passed = all(abs(m - p) <= SLOPE_TOLERANCE for _, _, m, _, p in rows) if rows else None
    claims[0].figure = _plot_slopes(rows, figures_dir)
    claims[0].details = {"rows": rows}

    # -- MF2: the transient at tanh, sw2 = 1.5
    group = groups.get(("tanh", TRANSIENT_SW2), [])
    if group:
        depth = int(group[0].get("model.depth"))
        ratios = [math.exp(2 * (p[0] - p[-1])) for p in map(measured_profile, group)]
        predicted = float(np.mean([math.exp(2 * predicted_profile(r, data.x_train)[0]) for r in group]))
        q_star = fixed_point(TRANSIENT_SW2, 0.0, "tanh")
        fixed = float(chi1(q_star, TRANSIENT_SW2, "tanh")) ** (depth - 1)
        centre = float(np.mean(ratios))
        per_example = float(np.mean([np.mean(np.exp(2 * _per_example_profiles(r, data.x_train)[:, 0]))
                                     for r in group]))
        claims[1].measured = (
            f"||dL/ds^1||^2 / ||dL/ds^{depth}||^2 = {fmt(centre)} (seeds "
            f"{', '.join(fmt(r) for r in ratios)}); "
            f"transient prediction {fmt(predicted)} (seeds' minibatch q^1 = "
            f"{', '.join(fmt(_q1(r, data.x_train)) for r in group)}); fixed-point chi_1*^{depth - 1} = "
            f"{fmt(fixed)} (q* = {fmt(q_star)}). Post hoc, not the criterion: the minibatch mean of q^1 is "
            f"pulled up by a few examples with large mean(x^2); averaging the prediction over each example's "
            f"own q^1 gives {fmt(per_example)}")
        claims[1].passed = centre < 1 and abs(centre / predicted - 1) <= TRANSIENT_TOLERANCE and fixed > 1
        claims[1].figure = _plot_transient(group, data.x_train, q_star, figures_dir)
    else:
        claims[1].measured = f"no tanh run at sw2 = {TRANSIENT_SW2}"
        claims[1].passed = None
        claims[1].note = "Not evaluable in this sweep."

    if smoke:
        mark_smoke(claims)
    else:
        why = {0: "At least one setting's measured slope is further from the mean-field slope than the "
                  "finite-width tolerance; see the figure for which.",
               1: "The measured first/last ratio at tanh sw2 = 1.5 left the 20% band around the transient "
                  "prediction (or was not below 1)."}
        explain_failures(claims, why)
    return claims


# ---------------------------------------------------------------- figures
def _plot_slopes(rows, figures_dir) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.2))
    styles = {"tanh": ("o", "tab:blue"), "relu": ("s", "tab:red")}
    for activation, (marker, color) in styles.items():
        mine = [r for r in rows if r[0] == activation]
        if not mine:
            continue
        ax.errorbar([r[4] for r in mine], [r[2] for r in mine], yerr=[r[3] for r in mine], fmt=marker,
                    color=color, ms=6, capsize=3, label=activation)
        for _, sw2, m, _, p in mine:
            ax.annotate(f"{fmt(sw2, 2)}", (p, m), textcoords="offset points", xytext=(5, -9), fontsize=7,
                        color=color)
    if rows:
        lo = min(min(r[4] for r in rows), min(r[2] for r in rows)) - 0.05
        hi = max(max(r[4] for r in rows), max(r[2] for r in rows)) + 0.05
        grid = np.linspace(lo, hi, 10)
        ax.plot(grid, grid, "k-", lw=1, label="measured = predicted")
        ax.fill_between(grid, grid - SLOPE_TOLERANCE, grid + SLOPE_TOLERANCE, color="gray", alpha=0.25,
                        label=f"+- {SLOPE_TOLERANCE} (criterion)")
    ax.axhline(0, color="gray", lw=0.5)
    ax.axvline(0, color="gray", lw=0.5)
    ax.set_xlabel("predicted slope d ln||dL/ds^l|| / dl  (q-map from q^1, Gauss-Hermite)")
    ax.set_ylabel("measured slope (mean +- std over 3 seeds)")
    ax.set_title("Mean field at init, 20 x 512: measured vs predicted slope (labels: sw2)\n"
                 "> 0: gradients vanish towards the input (ordered); < 0: they explode (chaotic)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, figure_path(figures_dir, "mean_field_slopes"))


def _plot_transient(group, x_train, q_star, figures_dir) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    depth = int(group[0].get("model.depth"))
    layers = np.arange(1, depth + 1)
    profiles = np.array([measured_profile(r) - measured_profile(r)[-1] for r in group])
    ax.plot(layers, profiles.mean(0), "o-", color="tab:blue", label="measured (mean over 3 seeds)")
    ax.fill_between(layers, profiles.min(0), profiles.max(0), color="tab:blue", alpha=0.2)
    predicted = np.array([predicted_profile(r, x_train) for r in group])
    ax.plot(layers, predicted.mean(0), "k--",
            label="theory: q^l iterated from the minibatch's q^1 (criterion)")
    ax.fill_between(layers, predicted.min(0), predicted.max(0), color="k", alpha=0.1)
    per_example = np.array([0.5 * np.log(np.mean(np.exp(2 * _per_example_profiles(r, x_train)), axis=0))
                            for r in group])
    ax.plot(layers, per_example.mean(0), "-.", color="tab:green", lw=1,
            label="theory averaged over each example's own q^1 (post hoc)")
    fixed = 0.5 * math.log(float(chi1(q_star, TRANSIENT_SW2, "tanh"))) * (depth - layers)
    ax.plot(layers, fixed, ":", color="tab:red", label="theory at the fixed point q* only")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xlabel("hidden layer l (1 = next to the input)")
    ax.set_ylabel("ln ||dL/ds^l|| - ln ||dL/ds^top||")
    ax.set_title(f"tanh, sw2 = {TRANSIENT_SW2}, 20 x 512 at init: measured profile vs transient and "
                 "fixed-point theory",
                 fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, figure_path(figures_dir, "mean_field_transient"))
