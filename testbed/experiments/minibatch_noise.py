"""Keskar et al. 2017: large-batch training lands in sharper minima than small-batch training.

Sharpness = the top eigenvalue of the Hessian of the full training loss at the final parameters,
found by power iteration on Hessian-vector products taken as central finite differences of the
engine's hand-written gradient (``analysis.top_hessian_eigenvalue``): no second-order code.
For context the figure marks 2/lr, the sharpness above which full-batch gradient descent at that
learning rate is unstable along the top eigenvector (the "edge of stability", Cohen et al. 2021).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from threadpoolctl import threadpool_limits

from testbed.data import load_dataset
from testbed.engine import MLPSpec
from testbed.experiments.analysis import top_hessian_eigenvalue
from testbed.experiments.base import Claim, figure_path, pyplot, save_figure
from testbed.tracking.sweep import Run

NAME = "minibatch_noise"
SMOKE = ["data.batch_size=16,1347", "seed=0", "train.steps=30", "train.log_every=10"]

SHARPNESS_RATIO = 2.0
SPEARMAN_MIN = 0.6
TRAIN_ACC_MIN = 0.99
GAP_MIN = 0.01  # small-batch test accuracy above large-batch by at least 1 point

PAPER = "Keskar, Mudigere, Nocedal, Smelyanskiy & Tang 2017 (ICLR), Tables 2-3"
SETUP = ("Digits, 64-64-64-10 tanh MLP (Xavier init), plain SGD lr 0.1 for 1500 steps at batch size "
         "16, 64, 256, 1347 (full batch), 3 seeds; sharpness = top Hessian eigenvalue of the full "
         "training loss by power iteration (<= 100 iterations, tol 1e-4) on central finite-difference "
         "Hessian-vector products (step 1e-4) of the engine's gradient, float64. Manual engine.")

SHARPNESS = Claim(
    preset=NAME, paper=PAPER,
    setup=SETUP,
    paper_says="Large-batch methods converge to sharp minimisers of the training loss, small-batch "
               "methods to flat ones (sharpness several times larger for large batches).",
    criterion=f"Every run reaches training accuracy >= {TRAIN_ACC_MIN:g}; the median sharpness at batch "
              f"1347 is >= {SHARPNESS_RATIO:g} x that at batch 16; Spearman rank correlation between "
              f"batch size and sharpness over all runs >= {SPEARMAN_MIN:g}.",
)
GAP = Claim(
    preset=NAME, paper=PAPER + " (generalisation gap)",
    setup=SETUP,
    paper_says="Large-batch training generalises worse (test accuracy lower by about 1-5 points on "
               "their networks); later work disputes that the gap is intrinsic (Hoffer et al. 2017; "
               "Goyal et al. 2017; Shallue et al. 2019).",
    criterion=f"Median test accuracy at batch 16 minus that at batch 1347 >= {GAP_MIN * 100:g} point.",
)
CLAIMS = [SHARPNESS, GAP]


def sharpness(run: Run, data_cache: dict, which: str = "final") -> float:
    """Top Hessian eigenvalue of the full training loss at the run's final (or "init") parameters."""
    data_seed = int(run.get("data.seed", 0))
    if data_seed not in data_cache:
        data_cache[data_seed] = load_dataset("digits", seed=data_seed)
    data = data_cache[data_seed]
    spec = MLPSpec(data.in_features, data.out_features, depth=int(run.get("model.depth")),
                   width=int(run.get("model.width")), activation=str(run.get("model.activation")),
                   loss=data.loss)
    value, _ = top_hessian_eigenvalue(spec, run.params(which), data.x_train, data.y_train)
    return value


def analyse(runs: list[Run], figures_dir: Path, smoke: bool = False) -> list[Claim]:
    plt = pyplot()
    ok = [r for r in runs if r.status == "completed"]
    cache: dict = {}
    with threadpool_limits(1):
        rows = [(min(int(r.get("data.batch_size")), 1347), sharpness(r, cache), r.summary["final/test_acc"],
                 r.summary["final/train_acc"], r.summary["final/train_loss"]) for r in ok]
        # diagnosis: the sharpness at init (one run per seed: every batch size starts from the same point)
        firsts = {int(r.get("seed")): r for r in reversed(ok)}
        init_sharp = {seed: sharpness(r, cache, "init") for seed, r in sorted(firsts.items())}
    rows_arr = np.array(rows, dtype=float).reshape(-1, 5)
    batches = sorted({int(b) for b in rows_arr[:, 0]})

    def per_batch(col):
        return {b: rows_arr[rows_arr[:, 0] == b, col] for b in batches}

    sharp, test_acc, train_loss = per_batch(1), per_batch(2), per_batch(4)
    loss_text = ", ".join(f"{np.median(v):.4f}" for v in train_loss.values())
    med_sharp = {b: float(np.median(v)) for b, v in sharp.items()}
    med_acc = {b: float(np.median(v)) for b, v in test_acc.items()}
    small, large = (batches[0], batches[-1]) if batches else (None, None)
    rho = float(spearmanr(rows_arr[:, 0], rows_arr[:, 1]).statistic) if len(rows_arr) > 2 else float("nan")
    min_train = float(rows_arr[:, 3].min()) if len(rows_arr) else float("nan")
    ratio = med_sharp[large] / med_sharp[small] if batches else float("nan")
    sharp_ok = (small == 16 and large == 1347 and min_train >= TRAIN_ACC_MIN and ratio >= SHARPNESS_RATIO
                and rho >= SPEARMAN_MIN)
    gap = med_acc[small] - med_acc[large] if batches else float("nan")
    gap_ok = small == 16 and large == 1347 and gap >= GAP_MIN
    lr = float(ok[0].get("optim.lr")) if ok else 0.1

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    _bands(ax, batches, sharp, "tab:purple", "top Hessian eigenvalue")
    ax.axhline(2 / lr, color="gray", ls=":", label=f"2 / lr = {2 / lr:g} (GD stability limit)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("minibatch size (1347 = full batch)")
    ax.set_ylabel("sharpness: top eigenvalue of the training-loss Hessian")
    ax.set_title("Sharpness of the final point against batch size")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    sharp_fig = save_figure(fig, figure_path(figures_dir, "minibatch_noise_sharpness"))

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    _bands(ax, batches, {b: 100 * v for b, v in test_acc.items()}, "tab:green", "test accuracy")
    if batches:
        ax.axhline(100 * (med_acc[large] + GAP_MIN), color="tab:red", ls="--",
                   label=f"criterion: batch {small} median must reach this "
                         f"({GAP_MIN * 100:g} point above batch {large})")
        ax.set_ylim(100 * min(v.min() for v in test_acc.values()) - 3, 100)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("minibatch size (1347 = full batch)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy against batch size (training accuracy ~100% for all)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    acc_fig = save_figure(fig, figure_path(figures_dir, "minibatch_noise_test_accuracy"))

    sharp_text = ", ".join(f"batch {b}: {v:.2f}" for b, v in med_sharp.items())
    per_loss = {b: float(np.median(sharp[b] / train_loss[b])) for b in batches}
    acc_spread = {b: 100 * float(np.ptp(v)) for b, v in test_acc.items()}
    init_text = ", ".join(f"{v:.2f}" for v in init_sharp.values())
    spread = max(per_loss.values()) / min(per_loss.values()) if per_loss else float("nan")
    top_init = max(init_sharp.values()) if init_sharp else float("nan")
    sharp_note = (
        "Diagnosis. The sharpness does not grow with batch size by the pre-registered margin: every run "
        "ends in the same flat region. All batch sizes reach 100% training accuracy and about the same "
        f"training loss ({loss_text}); at a cross-entropy minimum the Hessian scales with the residual "
        "probabilities p(1 - p), i.e. with the loss, and the final sharpness divided by the final training "
        f"loss varies by a factor {spread:.2f} across batch sizes (" + ", ".join(
            f"batch {b}: {v:.0f}" for b, v in per_loss.items()) + f"). The sharpness at init was {init_text} "
        f"(per seed; every batch size starts there), at the end {min(med_sharp.values()):.2f}-"
        f"{max(med_sharp.values()):.2f}. Gradient descent's stability limit 2/lr = {2 / lr:g} is "
        f"{2 / lr / top_init:.0f}x the sharpness at init and {2 / lr / max(med_sharp.values()):.0f}x the "
        "largest at the end (in between it was not measured): that limit, and SGD's noisier version of it "
        "at small batches, is what lets the batch size pick flatter or sharper regions (Jastrzebski et al. "
        "2017; Cohen et al. 2021), and a run far below it keeps little trace of its batch size once the "
        "loss has gone to ~0. Keskar et al. measured a different sharpness (the largest loss rise in a "
        "small box) with Adam on larger nets and data."
        if init_sharp and per_loss else "")
    gap_note = (
        f"Diagnosis. No generalisation gap of a point: small - large = {100 * gap:.2f} points, while the "
        "test accuracy spreads by " + ", ".join(f"{v:.1f}" for v in acc_spread.values())
        + " points across seeds at each batch size. Every batch size was trained to the same training loss "
        f"({loss_text}) and ends equally flat (previous row), so nothing is left to tell the large-batch "
        "nets apart; this matches the later papers that trace the gap to fewer updates or untuned "
        "learning rates rather than to the batch size itself (Hoffer et al. 2017; Shallue et al. 2019).")
    acc_text = ", ".join(f"batch {b}: {100 * v:.1f}%" for b, v in med_acc.items())
    return [
        replace(SHARPNESS, passed=sharp_ok, figure=sharp_fig,
                measured=f"median sharpness {sharp_text}; large/small = {ratio:.2f}; Spearman rho = "
                         f"{rho:.2f}; lowest training accuracy {min_train:.3f}; median final training loss "
                         f"by batch size {loss_text}.",
                note="" if sharp_ok else sharp_note,
                details={"sharpness": {b: v.tolist() for b, v in sharp.items()},
                         "init_sharpness": init_sharp}),
        replace(GAP, passed=gap_ok, figure=acc_fig,
                measured=f"median test accuracy {acc_text}; small - large = {100 * gap:.2f} points.",
                note="" if gap_ok else gap_note,
                details={"test_acc": {b: v.tolist() for b, v in test_acc.items()}}),
    ]


def _bands(ax, batches, values: dict, color: str, label: str) -> None:
    med = np.array([np.median(values[b]) for b in batches])
    lo = np.array([values[b].min() for b in batches])
    hi = np.array([values[b].max() for b in batches])
    ax.errorbar(batches, med, yerr=[med - lo, hi - med], fmt="o-", color=color, capsize=4,
                label=f"{label}: median, min-max over seeds")
    for b in batches:
        ax.scatter([b] * len(values[b]), values[b], color=color, s=10, alpha=0.5)
