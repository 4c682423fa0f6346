"""Rumelhart, Hinton & Williams 1986: backprop learns XOR and the 8-3-8 encoder and "very rarely
gets stuck in poor local minima".

The preset's sweep trains both problems from 20 seeds each (``conf/experiment/xor_encoder.yaml``);
a run has solved its problem when every output is on the right side of 0.5 (test/acc = 1; the
test split is the patterns themselves), and its sweeps to solve are the first logged step (every
10 sweeps) where that holds.

A third row (added after the first report, its criterion written before it ran) trains XOR with the
paper's error measure instead of BCE: E = 1/2 sum (t - o)^2 on the logistic output o, the gradient
summed over the four patterns of a sweep (``LogisticSumSquaredError``), everything else as the sweep
(Xavier-uniform, zero biases, lr 0.5, momentum 0.9, 2000 sweeps, seeds 0-19), so the loss is the one
change. It runs in process (``train_replicas``: the 20 seeds stacked as replicas of the manual engine,
numpy float64), a few seconds.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from testbed.data import load_dataset
from testbed.engine import MLP, MLPSpec, get_optimizer, init_replica_params
from testbed.experiments.base import Claim, figure_path, group_by, pyplot, save_figure
from testbed.tracking.sweep import Run

NAME = "xor_encoder"
SMOKE = ["seed=0", "train.steps=100"]

SUCCESS_MIN = 0.9
PAPER = "Rumelhart, Hinton & Williams 1986 (Nature 323), and PDP vol. 1 ch. 8"
SETUP = ("{net}, logistic hidden and output units, zero biases, Xavier-uniform weights, full batch "
         "(1 step = 1 sweep), lr 0.5, momentum 0.9, up to 2000 sweeps, 20 seeds; loss BCE on the logit "
         "(the data set is binary; the paper used squared error on the logistic output). Solved = "
         "every output on the right side of 0.5. Manual engine.")

XOR = Claim(
    preset=NAME, paper=PAPER + " (XOR)",
    setup=SETUP.format(net="XOR on a 2-2-1 net"),
    paper_says="Backprop finds a solution to XOR with two hidden units; the procedure very rarely "
               "gets stuck in poor local minima.",
    criterion=f"At least {SUCCESS_MIN:.0%} of the 20 seeds solve XOR within 2000 sweeps.",
)
ENCODER = Claim(
    preset=NAME, paper=PAPER + " (8-3-8 encoder)",
    setup=SETUP.format(net="The 8-3-8 encoder (8 one-hot patterns reproduced through 3 hidden units)"),
    paper_says="Backprop learns the encoder problem: the 3 hidden units come to code the 8 patterns "
               "(close to a binary code); it very rarely gets stuck.",
    criterion=f"At least {SUCCESS_MIN:.0%} of the 20 seeds solve the 8-3-8 encoder within 2000 sweeps.",
)
SQUARED_ERROR = "logistic_sum_squared_error"
XOR_SQUARED = Claim(
    preset=NAME, paper=PAPER + " (XOR, the paper's squared error; row added after the first report)",
    setup="XOR on a 2-2-1 net as in the first row, but with the paper's error measure E = 1/2 sum over "
          "the 4 patterns of (t - o)^2 on the logistic output o (gradient summed over the patterns, "
          "not averaged), lr 0.5, momentum 0.9, Xavier-uniform weights, zero biases, up to 2000 "
          "sweeps, seeds 0-19 (the same initial weights as the BCE row): the loss is the one change. "
          "Manual engine, in process (20 seeds stacked as replicas, numpy float64).",
    paper_says="Backprop finds a solution to XOR with two hidden units; the procedure very rarely "
               "gets stuck in poor local minima.",
    criterion=f"At least {SUCCESS_MIN:.0%} of the 20 seeds solve XOR within 2000 sweeps (the first "
              "row's criterion).",
)
CLAIMS = [XOR, ENCODER, XOR_SQUARED]


def train_replicas(problem: str, seeds: list[int], steps: int, loss: str = SQUARED_ERROR,
                   lr: float = 0.5, momentum: float = 0.9, log_every: int = 10,
                   init: str = "xavier_uniform", bias_init: str = "zeros") -> dict:
    """Full-batch SGD + momentum on XOR ("xor") or the 8-3-8 encoder ("encoder") for every seed at
    once, the seeds stacked as replicas (replica k starts from ``init_params`` of seed k, as a sweep
    job of that seed). Returns per seed the sweeps to solve (first logged step with every output on
    the right side of 0.5, inf if never or not solved at the end), the final loss and outputs."""
    data = load_dataset("xor", encoder=8 if problem == "encoder" else 0)
    width = 3 if problem == "encoder" else 2
    spec = MLPSpec(data.in_features, data.out_features, depth=1, width=width, activation="sigmoid",
                   init=init, bias_init=bias_init, loss=loss)
    net = MLP(spec, init_replica_params(spec, list(seeds)))
    optimizer = get_optimizer("sgd", lr=lr, momentum=momentum)
    x = np.broadcast_to(data.x_train, (len(seeds), *data.x_train.shape)).copy()
    y = np.broadcast_to(data.y_train, (len(seeds), *data.y_train.shape)).copy()
    first = np.full(len(seeds), np.inf)
    for step in range(steps + 1):
        if step % log_every == 0 or step == steps:  # evaluated before the step's update, as the app
            solved = ((net.forward(x, record=False) > 0) == (y > 0.5)).all(axis=(-2, -1))
            first[solved & ~np.isfinite(first)] = step
        if step == steps:
            break
        _, grads = net.loss_and_grads(x, y, record=False)
        optimizer.step(net.params, grads)
    output = net.forward(x, record=False)
    first[~solved] = np.inf  # solved at the end, as the sweep's sweeps_to_solve
    return {"seeds": list(seeds), "sweeps_to_solve": first, "final_loss": np.asarray(net.loss(x, y)),
            "outputs": 1 / (1 + np.exp(-output[..., 0]))}


def sweeps_to_solve(run: Run) -> float:
    """First logged step at which every output is on the right side of 0.5; inf if never, or if the
    run does not end solved."""
    if not run.finished or run.summary.get("final/test_acc") != 1.0:
        return float("inf")
    for row in run.metrics:
        if row.get("test/acc") == 1.0:
            return float(row["step"])
    return float("inf")


def analyse(runs: list[Run], figures_dir: Path, smoke: bool = False) -> list[Claim]:
    plt = pyplot()
    groups = group_by(runs, "analysis.problem")
    result = {}
    for (problem,), group in groups.items():
        times = np.array([sweeps_to_solve(r) for r in group])
        result[problem] = (group, times)
    budget = float(runs[0].get("train.steps", 2000)) if runs else 2000.0

    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.3))
    styles = {"xor": ("tab:blue", "XOR 2-2-1"), "encoder": ("tab:orange", "encoder 8-3-8")}
    for problem, (group, times) in result.items():
        color, label = styles.get(problem, ("k", problem))
        solved = np.sort(times[np.isfinite(times)])
        steps = np.concatenate([[1], solved, [budget]])
        frac = np.concatenate([[0], np.arange(1, len(solved) + 1), [len(solved)]]) / len(times)
        ax.step(steps, frac, where="post", color=color,
                label=f"{label}: {len(solved)}/{len(times)} solved")
        for i, run in enumerate(group):
            rows = [r for r in run.metrics if isinstance(r.get("test/loss"), float)]
            ax_loss.plot([max(r["step"], 1) for r in rows], [r["test/loss"] for r in rows], color=color,
                         lw=0.8, alpha=0.6, label=f"{label} (one line per seed)" if i == 0 else None)
    ax.axhline(SUCCESS_MIN, color="gray", ls=":", label=f"criterion: {SUCCESS_MIN:.0%} of seeds")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("sweeps through the patterns")
    ax.set_ylabel("fraction of seeds solved")
    ax.set_title("Seeds solved against sweeps")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    ax_loss.set_xscale("log")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("sweeps through the patterns")
    ax_loss.set_ylabel("BCE loss on the patterns")
    ax_loss.set_title("Loss curves (unsolved seeds stay flat)")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(True, which="both", alpha=0.3)
    fig.suptitle("Backprop on XOR and the 8-3-8 encoder (20 seeds each)")
    figure = save_figure(fig, figure_path(figures_dir, "xor_encoder_success"))

    claims = []
    for claim, problem in ((XOR, "xor"), (ENCODER, "encoder")):
        if problem not in result:
            claims.append(replace(claim, passed=False, figure=figure, note=f"no {problem} runs"))
            continue
        group, times = result[problem]
        solved = times[np.isfinite(times)]
        rate = len(solved) / len(times)
        ok = rate >= SUCCESS_MIN
        spread = (f"; sweeps to solve: median {np.median(solved):.0f}, range {solved.min():.0f}-"
                  f"{solved.max():.0f}" if len(solved) else "")
        stuck_runs = [r for r, t in zip(group, times, strict=True) if not np.isfinite(t)]
        stuck = [int(r.get("seed")) for r in stuck_runs]
        stuck_loss = [r.summary.get("final/train_loss") for r in stuck_runs if r.finished]
        claims.append(replace(
            claim, passed=ok, figure=figure,
            measured=f"{len(solved)}/{len(times)} seeds solved ({rate:.0%}){spread}"
                     + (f"; not solved: seeds {stuck}, final loss "
                        + ", ".join(f"{x:.3f}" for x in stuck_loss if x is not None) if stuck else "") + ".",
            note="" if ok else (
                f"{len(stuck)} of {len(times)} seeds stop at a non-solution"
                + (f" with loss {np.median([x for x in stuck_loss if x is not None]):.3f}"
                   f" (ln 2 / 2 = {np.log(2) / 2:.3f} is two patterns right and two at output 0.5)"
                   if any(x is not None for x in stuck_loss) else "")
                + ": more than the paper's 'very rarely'. The setup differs from the paper's in the loss "
                  "(BCE on the logit, not squared error), the initial weights (Xavier-uniform, zero "
                  "biases, not the paper's small random weights and thresholds) and the finite budget."),
            details={"sweeps_to_solve": times.tolist()}))

    # --- XOR with the paper's squared error (in process), and the diagnosis of the BCE row's FAIL
    seeds = [0, 1] if smoke else list(range(20))
    steps = 100 if smoke else 2000
    squared = train_replicas("xor", seeds, steps)
    times = squared["sweeps_to_solve"]
    solved = times[np.isfinite(times)]
    rate = len(solved) / len(times)
    stuck = [s for s, t in zip(seeds, times, strict=True) if not np.isfinite(t)]
    claims.append(replace(
        XOR_SQUARED, passed=rate >= SUCCESS_MIN, figure=figure,
        measured=f"{len(solved)}/{len(times)} seeds solved ({rate:.0%})"
                 + (f"; sweeps to solve: median {np.median(solved):.0f}, range {solved.min():.0f}-"
                    f"{solved.max():.0f}" if len(solved) else "")
                 + (f"; not solved: seeds {stuck}, final E "
                    + ", ".join(f"{squared['final_loss'][seeds.index(s)]:.3f}" for s in stuck)
                    if stuck else "")
                 + ".",
        details={"sweeps_to_solve": times.tolist()}))
    if not smoke and "xor" in result:
        bce_stuck = [int(r.get("seed")) for r, t in zip(*result["xor"], strict=True) if not np.isfinite(t)]
        note = _xor_diagnosis(seeds, steps, squared, bce_stuck)
        for claim in claims:
            if claim.passed is False and claim.paper in (XOR.paper, XOR_SQUARED.paper):
                claim.note = note
    return claims


def _xor_diagnosis(seeds: list[int], steps: int, squared: dict, bce_stuck: list[int]) -> str:
    """Where the unsolved XOR seeds stop, whether 10x the budget frees them, and whether random
    thresholds (biases) help: numbers from in-process runs of the same nets (diagnostics, no verdict)."""
    sq_stuck = [s for s, t in zip(seeds, squared["sweeps_to_solve"], strict=True) if not np.isfinite(t)]
    outputs = "; ".join(f"seed {s}: " + ", ".join(f"{o:.2f}" for o in squared["outputs"][seeds.index(s)])
                        for s in sq_stuck[:3])
    longer = {loss: int(np.sum(~np.isfinite(train_replicas("xor", seeds, 10 * steps, loss=loss)
                                            ["sweeps_to_solve"])))
              for loss in (SQUARED_ERROR, "bce_with_logits")}
    biased = {loss: int(np.sum(np.isfinite(
        train_replicas("xor", seeds, steps, loss=loss, bias_init="standard")["sweeps_to_solve"])))
        for loss in (SQUARED_ERROR, "bce_with_logits")}
    both = sorted(set(sq_stuck) & set(bce_stuck))
    return (
        "Diagnosis. The loss is not the main cause: with the paper's squared error "
        f"{len(seeds) - len(sq_stuck)} of {len(seeds)} seeds solve XOR (BCE: {len(seeds) - len(bce_stuck)}), "
        f"and seeds {both} fail under both losses from the same initial weights. The unsolved seeds stop "
        "where two patterns are right and two sit at output 0.5 (squared error 1/2 (0.25 + 0.25) = 0.25; "
        "BCE ln 2 / 2 = 0.347); their outputs "
        f"on (0,0), (0,1), (1,0), (1,1): {outputs}. It is a stuck point, not a short budget: after "
        f"{10 * steps} sweeps (10x) {longer[SQUARED_ERROR]} (squared error) and {longer['bce_with_logits']} "
        "(BCE) seeds are still unsolved. Random initial thresholds (biases U[-1/sqrt(2), 1/sqrt(2)] in "
        "place of zeros; the paper started weights and thresholds at small random values) do not help: "
        f"{biased[SQUARED_ERROR]} (squared error) and {biased['bce_with_logits']} (BCE) of {len(seeds)} "
        f"solve. So a 2-2-1 net falls into this state in {min(len(sq_stuck), len(bce_stuck))}-"
        f"{max(len(sq_stuck), len(bce_stuck))} of {len(seeds)} random starts here, more often than the "
        "paper's 'very rarely'.")
