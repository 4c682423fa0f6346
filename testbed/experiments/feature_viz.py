"""Erhan, Bengio, Courville & Vincent 2009: activation maximisation.

For each trained net (the preset's sweep) and each class unit k, gradient ascent on the input
climbs the unit's pre-softmax activation s_k(x) on the sphere ||x|| = r (r = the median norm of the
standardised training images; the paper's norm constraint), from 4 random starts, with the input
gradient ds_k/dx computed by the engine's backward (``analysis.maximise_activation``). The input
gradient is checked against torch autograd on the same net. The best of the 4 is the image the
unit prefers; it is shown in pixel space (the standardisation undone).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from testbed.data import load_dataset
from testbed.engine import MLPSpec
from testbed.experiments.analysis import maximise_activation, network
from testbed.experiments.base import Claim, figure_path, pyplot, save_figure
from testbed.reference.model import build_torch_mlp
from testbed.tracking.sweep import Run

NAME = "feature_viz"
SMOKE = ["seed=0", "train.epochs=1"]

STARTS = 4
ASCENT_STEPS = 300
PROB_MIN = 0.99
GRAD_TOL = 1e-10
MATCH_MIN = 8  # of 10 classes

PAPER = "Erhan, Bengio, Courville & Vincent 2009 (activation maximisation), Sec. 3-4"
SETUP = ("Digits, 64-64-10 tanh MLP trained 15 epochs (SGD momentum, engine and torch side by side), "
         "3 seeds; for each class unit, projected gradient ascent on the input of its pre-softmax "
         f"activation on the sphere ||x|| = median training-image norm, {ASCENT_STEPS} steps from "
         f"{STARTS} random starts (best kept), input gradients from the engine's backward (float64).")

MAXIMA = Claim(
    preset=NAME, paper=PAPER,
    setup=SETUP,
    paper_says="Gradient ascent on the input, using the gradient of a unit's activation, finds an "
               "input that drives the unit harder than the data does and shows what it responds to.",
    criterion=f"For every seed and class k: the net classifies x*_k as k with softmax probability >= "
              f"{PROB_MIN:g}; s_k(x*_k) exceeds s_k of every training image scaled to the same norm; "
              f"the engine's input gradient equals torch autograd's to relative error <= {GRAD_TOL:g}.",
)
LOOKS_LIKE = Claim(
    preset=NAME, paper=PAPER + " (interpretability of the maxima)",
    setup=SETUP + " Similarity: Pearson correlation of x*_k with each class's mean standardised "
                  "training image.",
    paper_says="The input that maximises a unit is an interpretable picture of what the unit "
               "encodes (for a class unit: a prototype of its class).",
    criterion=f"The preferred image of class unit k is most correlated with class k's mean image for "
              f">= {MATCH_MIN} of the 10 classes (median over seeds).",
)
CLAIMS = [MAXIMA, LOOKS_LIKE]


def pixel_statistics(data_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the raw training pixels, to undo testbed.data.digits' standardisation."""
    from sklearn.datasets import load_digits

    from testbed.data.digits import split_indices

    x, y = load_digits(return_X_y=True)
    train, _ = split_indices(y.astype(np.int64), 0.25, data_seed)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    std[std == 0] = 1.0
    return mean, std


def torch_input_gradient(spec: MLPSpec, params: dict, x: np.ndarray, units: np.ndarray) -> np.ndarray:
    """d s_{units[i]} / d x_i by torch autograd on the reference network (float64)."""
    model = build_torch_mlp(spec, params, dtype="float64")
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = model(xt)
    out[torch.arange(len(units)), torch.as_tensor(units)].sum().backward()
    return xt.grad.numpy()


def preferred_inputs(run: Run, data, starts: int = STARTS, steps: int = ASCENT_STEPS) -> dict:
    spec = MLPSpec(data.in_features, data.out_features, depth=int(run.get("model.depth")),
                   width=int(run.get("model.width")), activation=str(run.get("model.activation")),
                   loss=data.loss)
    params = run.params("final")
    net = network(spec, params)
    classes = data.out_features
    radius = float(np.median(np.linalg.norm(data.x_train, axis=1)))
    units = np.repeat(np.arange(classes), starts)
    rng = np.random.default_rng(int(run.get("seed")))
    x_all, act_all = maximise_activation(net, units, rng.standard_normal((len(units), data.in_features)),
                                         radius, steps=steps)
    best = np.array([k * starts + int(np.argmax(act_all[k * starts:(k + 1) * starts]))
                     for k in range(classes)])
    x_star, act = x_all[best], act_all[best]

    logits = np.asarray(net.forward(x_star))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    scaled = data.x_train * (radius / np.linalg.norm(data.x_train, axis=1, keepdims=True))
    data_best = np.asarray(net.forward(scaled)).max(axis=0)  # per unit, over training images

    net.forward(x_star)
    engine_grad = np.asarray(net.backward(np.eye(classes), input_grad=True))
    reference = torch_input_gradient(spec, params, x_star, np.arange(classes))
    grad_err = float(np.linalg.norm(engine_grad - reference) / np.linalg.norm(reference))

    means = np.array([data.x_train[data.y_train == k].mean(axis=0) for k in range(classes)])
    corr = np.corrcoef(x_star, means)[:classes, classes:]  # corr[k, j]: x*_k with mean image j
    return dict(x=x_star, act=act, prob=probs[np.arange(classes), np.arange(classes)], data_best=data_best,
                grad_err=grad_err, corr=corr, matches=int(np.sum(corr.argmax(axis=1) == np.arange(classes))),
                spread=_start_agreement(x_all, starts, classes))


def _start_agreement(x_all: np.ndarray, starts: int, classes: int) -> float:
    """Mean pairwise correlation of the maxima reached from different starts (1 = the same image)."""
    values = []
    for k in range(classes):
        c = np.corrcoef(x_all[k * starts:(k + 1) * starts])
        values += list(c[np.triu_indices(starts, 1)])
    return float(np.mean(values)) if values else float("nan")


def analyse(runs: list[Run], figures_dir: Path, smoke: bool = False) -> list[Claim]:
    plt = pyplot()
    ok = sorted([r for r in runs if r.status == "completed"], key=lambda r: int(r.get("seed")))
    if not ok:
        return [replace(c, passed=False, note="no finished runs") for c in CLAIMS]
    data_seed = int(ok[0].get("data.seed", 0))
    data = load_dataset("digits", seed=data_seed)
    with threadpool_limits(1):
        found = [preferred_inputs(r, data, steps=50 if smoke else ASCENT_STEPS) for r in ok]
    mean, std = pixel_statistics(data_seed)
    classes = data.out_features

    prob_min = min(float(f["prob"].min()) for f in found)
    beats = all(bool(np.all(f["act"] > f["data_best"])) for f in found)
    margin = min(float(np.min(f["act"] / f["data_best"])) for f in found)
    grad_err = max(f["grad_err"] for f in found)
    maxima_ok = prob_min >= PROB_MIN and beats and grad_err <= GRAD_TOL
    matches = [f["matches"] for f in found]
    looks_ok = float(np.median(matches)) >= MATCH_MIN

    # the preferred images, in pixel space, one row per seed, and the class means below
    rows = len(found) + 1
    fig, axes = plt.subplots(rows, classes, figsize=(1.3 * classes, 1.45 * rows))
    axes = np.atleast_2d(axes)
    class_means = np.array([data.x_train[data.y_train == k].mean(axis=0) for k in range(classes)])
    panels = [(f["x"], f"x* seed {int(r.get('seed'))}") for f, r in zip(found, ok, strict=True)]
    for row, (images, label) in enumerate(panels + [(class_means, "class mean")]):
        for k in range(classes):
            ax = axes[row, k]
            ax.imshow((images[k] * std + mean).reshape(8, 8), cmap="gray_r")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"unit {k}", fontsize=9)
            if k == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle("The 8x8 input each class unit prefers (activation maximisation, pixel space; "
                 "dark = ink)", fontsize=10)
    images_fig = save_figure(fig, figure_path(figures_dir, "feature_viz_preferred_inputs"))

    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    corr = np.mean([f["corr"] for f in found], axis=0)
    im = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    for k in range(classes):
        j = int(np.argmax(corr[k]))
        ax.add_patch(plt.Rectangle((j - 0.5, k - 0.5), 1, 1, fill=False, lw=2,
                                   edgecolor="k" if j == k else "magenta"))
    ax.set_xticks(range(classes))
    ax.set_yticks(range(classes))
    ax.set_xlabel("class j (mean training image)")
    ax.set_ylabel("class unit k (its preferred input x*_k)")
    ax.set_title("corr(x*_k, mean image of class j), mean over seeds;\nbox: best match per row "
                 "(black = own class)", fontsize=9)
    fig.colorbar(im, ax=ax, label="Pearson correlation")
    corr_fig = save_figure(fig, figure_path(figures_dir, "feature_viz_correlation"))

    return [
        replace(MAXIMA, passed=maxima_ok, figure=images_fig,
                measured=f"{len(found)} seeds x {classes} units: lowest softmax probability of the own "
                         f"class {prob_min:.4f}; s_k(x*) / best training image s_k >= {margin:.2f}; engine "
                         f"vs torch input gradient rel. error {grad_err:.1e}; maxima from different starts "
                         f"agree "
                         f"(mean pairwise corr {np.mean([f['spread'] for f in found]):.3f}).",
                note="" if maxima_ok else "A maximum is not classified as its unit's class with the "
                                          "required confidence, or does not beat the data."),
        replace(LOOKS_LIKE, passed=looks_ok, figure=corr_fig,
                measured=f"classes whose preferred image best matches their own mean image, per seed: "
                         f"{matches} (median {np.median(matches):.0f} of {classes}); mean diagonal "
                         f"correlation {np.mean(np.diag(corr)):.2f}.",
                note="" if looks_ok else "The maxima of the class units do not resemble their class "
                                         "means for enough classes: with a pure norm constraint the "
                                         "ascent also exploits directions the data never uses."),
    ]
