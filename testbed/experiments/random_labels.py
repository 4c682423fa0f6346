"""Zhang, Bengio, Hardt, Recht & Vinyals 2017: networks fit random labels.

The app's data sets have no label-shuffling option, so ``compute`` trains in-process with the
engine: Zhang's MLP 1x512 (ReLU) on digits, for each seed one replica on the true labels and one on
random labels (each training label replaced by a uniform draw from the 10 classes, fixed per seed),
all replicas stacked on a leading axis and trained in lockstep on the same minibatches (SGD with
momentum), until every replica fits its training labels exactly or the epoch budget runs out.
Epochs to fit = the first epoch after which training accuracy on its own labels is 100%.
The engine's gradient at the end is checked against torch autograd on the same parameters.
``conf/experiment/random_labels.yaml`` runs the true-label half through the app.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from testbed.data import BatchSampler, load_dataset
from testbed.engine import MLP, Backend, MLPSpec, get_optimizer
from testbed.engine.backend import to_numpy
from testbed.engine.network import init_replica_params
from testbed.experiments.base import Claim, figure_path, pyplot, save_figure
from testbed.reference.lockstep import relative_error
from testbed.reference.model import build_torch_loss, build_torch_mlp

NAME = "random_labels"
SMOKE: list[str] = []  # compute() takes smoke=True itself

SEEDS = (0, 1, 2)
WIDTH = 512
BATCH = 128
LR = 0.01
MOMENTUM = 0.9
MAX_EPOCHS = 1000
SLOWDOWN_MAX = 10.0
CHANCE_TOL = 0.05  # |test acc - 0.1|: 3.5 binomial standard deviations for the 450 test images
TRUE_TEST_MIN = 0.9

PAPER = "Zhang, Bengio, Hardt, Recht & Vinyals 2017 (ICLR), Fig. 1a-b, Table 1"
SETUP = (f"Digits (1347 train / 450 test), MLP 1x{WIDTH} ReLU (Kaiming-normal init), SGD momentum "
         f"{MOMENTUM} lr {LR}, batch {BATCH}, cross-entropy, until 100% training accuracy or {MAX_EPOCHS} "
         f"epochs; {len(SEEDS)} seeds, each trained on the true labels and on random labels (uniform "
         "over the 10 classes, fixed per seed). Engine (torch backend, float32), replicas stacked; "
         "final gradients checked against torch autograd.")

FITS = Claim(
    preset=NAME, paper=PAPER,
    setup=SETUP,
    paper_says="Deep nets fit random labels: training accuracy reaches ~100% (Table 1: MLP 1x512 on "
               "CIFAR-10 reaches 100% training accuracy on random labels).",
    criterion=f"Every seed's random-label replica reaches 100% training accuracy within {MAX_EPOCHS} epochs.",
)
SLOWDOWN = Claim(
    preset=NAME, paper=PAPER + " (convergence slowdown)",
    setup=SETUP,
    paper_says="Training time increases only by a small constant factor compared with the true "
               "labels (Fig. 1b: a few times more steps to fit).",
    criterion=f"Median epochs to fit random labels <= {SLOWDOWN_MAX:g} x median epochs to fit the true "
              "labels (both must fit).",
)
CHANCE = Claim(
    preset=NAME, paper=PAPER + " (test accuracy)",
    setup=SETUP + " Test accuracy is against the true test labels.",
    paper_says="With random labels the test accuracy is at chance (the net memorised, it learned "
               "nothing that generalises); with true labels the same net generalises.",
    criterion=f"Random labels: |test accuracy - 0.10| <= {CHANCE_TOL:g} for every seed; true labels: test "
              f"accuracy >= {TRUE_TEST_MIN:g} for every seed.",
)
CLAIMS = [FITS, SLOWDOWN, CHANCE]


def random_labels(num: int, classes: int, seed: int) -> np.ndarray:
    """Zhang et al.'s random labels: every label replaced by a uniform draw, fixed by the seed."""
    return np.random.default_rng([seed, 2017]).integers(0, classes, num).astype(np.int64)


def accuracy(net: MLP, x_stacked, labels: np.ndarray) -> np.ndarray:
    """Per-replica accuracy of net on x (K, N, D) against labels (K, N)."""
    return (to_numpy(net.forward(x_stacked)).argmax(axis=-1) == labels).mean(axis=-1)


def compute(out_dir: Path, smoke: bool = False) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[:1] if smoke else SEEDS
    max_epochs = 3 if smoke else MAX_EPOCHS
    data = load_dataset("digits", seed=0)
    classes = data.out_features
    spec = MLPSpec(data.in_features, classes, depth=1, width=WIDTH, activation="relu",
                   init="kaiming_normal", loss="cross_entropy")
    kinds = [("true", s) for s in seeds] + [("random", s) for s in seeds]
    k = len(kinds)
    labels = np.stack([data.y_train if kind == "true" else random_labels(len(data.y_train), classes, s)
                       for kind, s in kinds])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the replicas are one batched stream; 1 thread avoids contention
    try:
        backend = Backend("torch", "float32")
        initial = init_replica_params(spec, [s for _, s in kinds])
        net = MLP(spec, {key: backend.asarray(v) for key, v in initial.items()})
        optimizer = get_optimizer("sgd", lr=LR, momentum=MOMENTUM)
        x_train = backend.asarray(np.repeat(data.x_train[None], k, axis=0))
        x_test = backend.asarray(np.repeat(data.x_test[None], k, axis=0))
        y_train = backend.labels(labels)
        sampler = BatchSampler(len(data.y_train), BATCH, seed=0)
        fitted_at = [None] * k
        history = []
        for epoch in range(1, max_epochs + 1):
            for _ in range(sampler.batches_per_epoch):
                idx = torch.as_tensor(sampler.next())
                _, grads = net.loss_and_grads(x_train[:, idx], y_train[:, idx])
                optimizer.step(net.params, grads)
            train_acc = accuracy(net, x_train, labels)
            history.append(train_acc.tolist())
            for i, acc in enumerate(train_acc):
                if fitted_at[i] is None and acc == 1.0:
                    fitted_at[i] = epoch
            if all(f is not None for f in fitted_at):
                break
        test_acc = accuracy(net, x_test, np.broadcast_to(data.y_test, (k, len(data.y_test))))
        grad_err = _reference_check(spec, net, data.x_train[:BATCH], labels[:, :BATCH])
    finally:
        torch.set_num_threads(threads)
    result = {
        "replicas": [{"labels": kind, "seed": s, "epochs_to_fit": fitted_at[i],
                      "test_acc": float(test_acc[i]),
                      "train_acc": history[-1][i], "history": [h[i] for h in history]}
                     for i, (kind, s) in enumerate(kinds)],
        "max_epochs": max_epochs, "grad_rel_err": grad_err, "smoke": smoke,
    }
    (out_dir / "random_labels.json").write_text(json.dumps(result))
    return result


def _reference_check(spec: MLPSpec, net: MLP, x: np.ndarray, labels: np.ndarray) -> float:
    """Largest relative error between the engine's and torch autograd's parameter gradients, per
    replica, at the final parameters on one minibatch (float32)."""
    worst = 0.0
    backend = Backend("torch", "float32")
    for i in range(labels.shape[0]):
        params = {key: to_numpy(v[i]).astype(np.float64) for key, v in net.params.items()}
        single = MLP(spec, {key: backend.asarray(v) for key, v in params.items()})
        _, grads = single.loss_and_grads(backend.asarray(x), backend.labels(labels[i]))
        model = build_torch_mlp(spec, params, dtype="float32")
        loss = build_torch_loss(spec.loss)(model(torch.as_tensor(x, dtype=torch.float32)),
                                           torch.as_tensor(labels[i]))
        loss.backward()
        for key, p in zip(spec.param_keys(), model.parameters(), strict=True):
            worst = max(worst, relative_error(grads[key], p.grad))
    return worst


def analyse(result: dict, figures_dir: Path, smoke: bool = False) -> list[Claim]:
    plt = pyplot()
    reps = result["replicas"]
    true = [r for r in reps if r["labels"] == "true"]
    rand = [r for r in reps if r["labels"] == "random"]
    fits = all(r["epochs_to_fit"] is not None for r in rand)
    true_fits = all(r["epochs_to_fit"] is not None for r in true)
    med_true = float(np.median([r["epochs_to_fit"] or np.inf for r in true]))
    med_rand = float(np.median([r["epochs_to_fit"] or np.inf for r in rand]))
    slowdown = med_rand / med_true
    chance_ok = all(abs(r["test_acc"] - 0.1) <= CHANCE_TOL for r in rand) and all(
        r["test_acc"] >= TRUE_TEST_MIN for r in true)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for group, color, label in ((true, "tab:green", "true labels"), (rand, "tab:red", "random labels")):
        for i, r in enumerate(group):
            epochs = np.arange(1, len(r["history"]) + 1)
            ax.plot(epochs, 100 * np.array(r["history"]), color=color, lw=1.2, alpha=0.8,
                    label=f"{label} (one line per seed)" if i == 0 else None)
        if all(r["epochs_to_fit"] for r in group):
            ax.axvline(np.median([r["epochs_to_fit"] for r in group]), color=color, ls=":",
                       label=f"{label}: median epochs to 100%")
    ax.axhline(10, color="gray", ls="--", lw=1, label="chance (10%)")
    ax.set_xscale("log")
    ax.set_ylim(0, 102)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training accuracy on its own labels (%)")
    ax.set_title("Fitting true and random labels (MLP 1x512, digits)")
    ax.legend(fontsize=8, loc="center right")
    ax.grid(True, which="both", alpha=0.3)
    fit_fig = save_figure(fig, figure_path(figures_dir, "random_labels_fit"))

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for pos, (group, color, label) in enumerate(((true, "tab:green", "true labels"),
                                                 (rand, "tab:red", "random labels"))):
        values = 100 * np.array([r["test_acc"] for r in group])
        ax.bar(pos, np.median(values), color=color, alpha=0.5, label=f"{label}: median")
        ax.scatter([pos] * len(values), values, color=color, zorder=3, label=f"{label}: seeds")
    ax.axhline(10, color="gray", ls="--", label="chance (10%)")
    ax.axhspan(100 * (0.1 - CHANCE_TOL), 100 * (0.1 + CHANCE_TOL), color="gray", alpha=0.15,
               label="criterion band for random labels")
    ax.set_xticks([0, 1], ["true labels", "random labels"])
    ax.set_ylabel("test accuracy on the true test labels (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Test accuracy after fitting true or random labels")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    test_fig = save_figure(fig, figure_path(figures_dir, "random_labels_test_accuracy"))

    def epochs(group):
        return [r["epochs_to_fit"] for r in group]

    check = f" Engine vs torch gradient at the end: rel. error <= {result['grad_rel_err']:.1e} (float32)."
    return [
        replace(FITS, passed=fits, figure=fit_fig,
                measured=f"random labels fitted to 100% at epochs {epochs(rand)} (final training accuracy "
                         f"{[round(r['train_acc'], 4) for r in rand]})." + check,
                note="" if fits else f"A random-label replica did not reach 100% within "
                                     f"{result['max_epochs']} epochs."),
        replace(SLOWDOWN, passed=fits and true_fits and slowdown <= SLOWDOWN_MAX, figure=fit_fig,
                measured=f"epochs to fit: true labels {epochs(true)}, random labels {epochs(rand)}; ratio of "
                         f"medians {slowdown:.1f}.",
                note="" if fits and true_fits and slowdown <= SLOWDOWN_MAX else
                "Random labels take more than the pre-registered factor longer to fit here."),
        replace(CHANCE, passed=chance_ok, figure=test_fig,
                measured="test accuracy: true labels " + ", ".join(f"{r['test_acc']:.3f}" for r in true)
                         + "; random labels " + ", ".join(f"{r['test_acc']:.3f}" for r in rand) + ".",
                note="" if chance_ok else "Test accuracy is outside the pre-registered bands."),
    ]
