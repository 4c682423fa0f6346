"""One training run: data, model, trainers, the loop, diagnostics, outputs.

The loop takes ``steps`` optimiser steps; at step 0, every ``log_every``
steps and after the last step it records the per-layer diagnostics of that
step's minibatch and evaluates on the test split, both with the parameters
before that step's update (row k: after k updates). A loss that is not finite,
beyond ``divergence_factor`` times the initial loss, or above ``max_loss``,
ends the run with status ``diverged``: a result, not a crash. Every
``checkpoint_every`` steps the whole state goes to ``checkpoint.pt``
(``testbed.app.checkpoint``), from which ``train(..., resume=...)`` continues.
"""

from __future__ import annotations

import io
import logging
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from testbed.app.checkpoint import CHECKPOINT, FINISHED, rng_state, save_checkpoint, set_rng_state
from testbed.app.schema import ConfigError
from testbed.data import BatchSampler, load_dataset
from testbed.diagnostics import layer_metrics, per_layer
from testbed.engine import Backend, MLPSpec, init_params
from testbed.reference.discrepancy import bound_ratio, gradient_error_bounds
from testbed.reference.lockstep import relative_error
from testbed.tracking.files import (
    MetricsFile,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_metrics,
)
from testbed.training import ManualTrainer, TorchTrainer

log = logging.getLogger("testbed")
# engine=both: the discrepancies kept at their largest over the run (summary.json: "<key>_max")
CMP_KEYS = ("cmp/loss_abs_diff", "cmp/grad_max_rel_err", "cmp/param_max_rel_err", "cmp/grad_err_bound_ratio")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is not allowed here: no CUDA device is available; "
                          "use device=cpu or device=auto")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        warnings.warn("device=auto: no CUDA device available, running on cpu", stacklevel=2)
        return "cpu"
    return device


def optimizer_hyper(optim: DictConfig) -> tuple[str, dict]:
    """The optimiser's name and the hyperparameters it takes, from the optim config."""
    name = str(optim.name)
    hyper = {"lr": optim.lr, "weight_decay": optim.weight_decay}
    if name == "sgd":
        hyper.update(momentum=optim.momentum, dampening=optim.dampening, nesterov=optim.nesterov)
    elif name in ("adam", "adamw"):
        hyper.update(betas=tuple(optim.betas))
    elif name == "rmsprop":
        hyper.update(alpha=optim.alpha, momentum=optim.momentum, centered=optim.centered)
    if optim.eps is not None and name != "sgd":
        hyper["eps"] = optim.eps
    return name, hyper


def model_spec(cfg: DictConfig, dataset) -> MLPSpec:
    m = cfg.model
    return MLPSpec(
        in_features=dataset.in_features, out_features=dataset.out_features, depth=m.depth,
        width=m.width, activation=str(m.activation), activation_params=dict(m.activation_params),
        init=str(m.init), init_scale=m.init_scale, init_params=dict(m.init_params),
        bias_init=str(m.bias_init), bias_std=m.bias_std, loss=dataset.loss)


def manual_backend(cfg: DictConfig, device: str) -> Backend:
    """The hand-written engine's arrays: engine.backend's, of model.dtype, on ``device`` (numpy: the
    CPU). ConfigError where engine.cuda_graph asks for CUDA graphs of arrays not on a CUDA device."""
    name = str(cfg.engine.backend)
    backend = Backend(name, str(cfg.model.dtype), device if name == "torch" else "cpu")
    if cfg.engine.cuda_graph and (backend.name != "torch" or not str(backend.device).startswith("cuda")):
        raise ConfigError(
            f"engine.cuda_graph=True is not allowed here: the manual engine runs on {backend.name} "
            f"arrays on device {backend.device!r} (device=auto finds no CUDA device); "
            "engine.cuda_graph must be false unless it runs on CUDA (engine.backend=torch, "
            "device=cuda)")
    return backend


def build_trainers(cfg: DictConfig, spec: MLPSpec, device: str) -> list:
    """[manual], [torch] or [manual, torch], all from the same initial parameters."""
    initial = init_params(spec, cfg.seed)
    name, hyper = optimizer_hyper(cfg.optim)
    dtype, engine = str(cfg.model.dtype), str(cfg.engine.name)
    trainers = []
    if engine in ("manual", "both"):
        backend = manual_backend(cfg, device)
        trainers.append(ManualTrainer(spec, initial, backend, name, hyper, cfg.optim.clip_norm,
                                      cuda_graph=cfg.engine.cuda_graph, fuse_sgd=engine == "manual"))
    if engine in ("torch", "both"):
        trainers.append(TorchTrainer(spec, initial, device, dtype, name, hyper, cfg.optim.clip_norm))
    return trainers


def compare(manual: ManualTrainer, reference: TorchTrainer, manual_loss: float, torch_loss: float,
            bounds: dict | None = None) -> dict:
    """The two sides' discrepancy after a step; with ``bounds`` (``gradient_bounds`` before the step:
    logged steps) also the gradients' difference in units of its rounding-error bound."""
    return discrepancy(manual_loss, torch_loss, manual.grads, reference.grads, manual.net.params,
                       reference.named_params(), bounds, manual.clip_norm, manual.grad_norm)


def discrepancy(manual_loss: float, torch_loss: float, manual_grads: dict, torch_grads: dict,
                manual_params: dict, torch_params: dict, bounds: dict | None = None,
                clip_norm: float | None = None, grad_norm=None) -> dict:
    """The ``cmp/*`` of one step of one model (a run's, or a replica's): loss difference, largest
    relative gradient error and parameter drift, and with ``bounds`` the bound ratio (gradients
    clipped at ``clip_norm``, ``grad_norm`` the manual side's norm before clipping)."""
    compared = {
        "cmp/loss_abs_diff": abs(manual_loss - torch_loss),
        "cmp/grad_max_rel_err": max(relative_error(manual_grads[k], torch_grads[k]) for k in torch_grads),
        "cmp/param_max_rel_err": max(relative_error(manual_params[k], torch_params[k]) for k in torch_params),
    }
    if bounds is not None:
        compared["cmp/grad_err_bound_ratio"] = bound_ratio(manual_grads, torch_grads, bounds, clip_norm,
                                                           grad_norm)
    return compared


def gradient_bounds(manual: ManualTrainer, idx: np.ndarray) -> dict:
    """Before the step on the minibatch ``idx``: the rounding-error bound of each of its gradients."""
    return gradient_error_bounds(manual.spec, manual.net.params, *manual.minibatch(idx))


def compared_text(compared: dict) -> str:
    """The progress line's discrepancy: the bound ratio first (<= 1: within rounding), then the
    plain relative error, which cancellation inflates."""
    if not compared:
        return ""
    ratio = compared.get("cmp/grad_err_bound_ratio")
    ratio_text = f" grad err/bound {ratio:.1e}" if ratio is not None else ""
    return (" |{} (rel {cmp/grad_max_rel_err:.1e}) |dloss| {cmp/loss_abs_diff:.1e} "
            "param drift {cmp/param_max_rel_err:.1e}".format(ratio_text, **compared))


def _show_progress(cfg: DictConfig) -> bool:
    return bool(cfg.train.progress) and sys.stderr.isatty() and not os.environ.get("CI")


def _is_divergent(loss: float, initial_loss: float, train_cfg: DictConfig) -> bool:
    """Not finite, above divergence_factor x max(initial loss, 1), or above max_loss when set."""
    ceiling = train_cfg.divergence_factor * max(abs(initial_loss), 1.0)
    if train_cfg.max_loss is not None:
        ceiling = min(ceiling, train_cfg.max_loss)
    return not math.isfinite(loss) or loss > ceiling


def train(cfg: DictConfig, run_dir: Path, logger, resume: dict | None = None) -> dict:
    """Run one configuration; write config.yaml and metrics.jsonl, return the summary.

    With ``resume`` (a checkpoint from ``testbed.app.checkpoint``) the run continues from it: the
    state is restored, metrics.jsonl is cut back to its length at the checkpoint, and the finished
    run's outputs equal those of a run never stopped (bitwise on CPU).
    """
    started = time.time()
    run_dir = Path(run_dir)
    seed_everything(cfg.seed)
    device = resolve_device(str(cfg.device))
    options = dict(cfg.data.options)
    if cfg.data.path:
        options["path"] = cfg.data.path
    dataset = load_dataset(str(cfg.data.name), seed=cfg.data.seed, **options)
    spec = model_spec(cfg, dataset)
    trainers = build_trainers(cfg, spec, device)
    for trainer in trainers:
        trainer.load_data(dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
    primary = trainers[0]
    sampler = BatchSampler(len(dataset.x_train), cfg.data.batch_size, seed=cfg.seed)
    steps = cfg.train.epochs * sampler.batches_per_epoch if cfg.train.epochs else cfg.train.steps
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    checkpoint_every = cfg.train.checkpoint_every

    summary = {"status": "completed", "steps": 0, "device": device, "num_layers": spec.num_layers}
    rows: list[dict] = []
    cmp_max = dict.fromkeys(CMP_KEYS, 0.0)
    initial_loss, last_finite_loss, wall_before, start = None, None, 0.0, 0
    for leftover in run_dir.glob(".*.tmp"):  # an atomic write cut short by a kill
        leftover.unlink(missing_ok=True)
    if resume is None:
        # a new run: nothing from an earlier run in this folder may pass for this one's
        for stale in ("summary.json", CHECKPOINT, "params_init.npz", "params_final.npz"):
            (run_dir / stale).unlink(missing_ok=True)
        atomic_write_text(run_dir / "config.yaml", config_yaml)
        if cfg.train.save_params:
            save_params(run_dir / "params_init.npz", primary.params_numpy())
        metrics = MetricsFile(run_dir / "metrics.jsonl")
    else:
        loop = resume["loop"]
        for trainer, state in zip(trainers, resume["trainers"], strict=True):
            trainer.load_state_dict(state)
        sampler.load_state_dict(resume["sampler"])
        start, summary, cmp_max = loop["step"], dict(loop["summary"]), dict(loop["cmp_max"])
        initial_loss, last_finite_loss = loop["initial_loss"], loop["last_finite_loss"]
        wall_before = loop["wall_s"]
        summary["resumed_from"] = [*summary.get("resumed_from", []), start]
        metrics = MetricsFile(run_dir / "metrics.jsonl", resume_at=loop["metrics_bytes"])
        rows = read_metrics(run_dir / "metrics.jsonl", numbers=True)
        for row in rows:  # a fresh W&B run: give it the history before the checkpoint
            logger.log(row, row["step"])
        set_rng_state(resume["rng"])
        log.info("resumed at step %d of %d", start, steps)

    progress = None
    if _show_progress(cfg):
        from tqdm import tqdm
        progress = tqdm(total=steps, initial=start, desc="train", unit="step", leave=False)
    try:
        for step in range(start, steps + 1):
            idx = sampler.next()
            log_now = step % cfg.train.log_every == 0 or step == steps
            update = step < steps
            # the test split sees the parameters this step's minibatch loss is of (before its update)
            evaluated = primary.evaluate("test") if log_now else None
            bounds = gradient_bounds(primary, idx) if len(trainers) == 2 and log_now else None
            losses = [t.step(idx, update=update, record=log_now) for t in trainers]
            loss = losses[0]
            compared = compare(*trainers, *losses, bounds) if len(trainers) == 2 else {}
            for key, value in compared.items():
                cmp_max[key] = max(cmp_max.get(key, 0.0), value) if math.isfinite(value) else math.inf

            initial_loss = loss if initial_loss is None else initial_loss
            if _is_divergent(loss, initial_loss, cfg.train):
                summary.update(status="diverged", diverged_at_step=step, last_finite_loss=last_finite_loss,
                               diverged_loss=loss)
                row = {"step": step, "train/loss": loss, "status": "diverged", **compared}
                metrics.write(row)
                logger.log(row, step)
                log.info("diverged at step %d: loss %s (last finite %s)", step, loss, last_finite_loss)
                break
            last_finite_loss = loss
            summary["steps"] = step if not update else step + 1

            if log_now:
                test_loss, test_acc = evaluated
                row = {"step": step, "epoch": sampler.epoch, "train/loss": loss, "test/loss": test_loss}
                if test_acc is not None:
                    row["test/acc"] = test_acc
                row.update(layer_metrics(spec.activation, **primary.record))
                row.update(compared)
                metrics.write(row)
                logger.log(row, step)
                rows.append(row)
                cmp_text = compared_text(compared)
                acc_text = f" test acc {test_acc:.3f}" if test_acc is not None else ""
                log.info("step %5d  loss %.4f  test loss %.4f%s%s", step, loss, test_loss, acc_text,
                         cmp_text)
            if checkpoint_every and update and (step + 1) % checkpoint_every == 0:
                save_checkpoint(run_dir, {
                    "config": config_yaml,
                    "trainers": [t.state_dict() for t in trainers],
                    "sampler": sampler.state_dict(),
                    "rng": rng_state(device),
                    "loop": {"step": step + 1, "summary": summary, "cmp_max": cmp_max,
                             "initial_loss": initial_loss, "last_finite_loss": last_finite_loss,
                             "wall_s": wall_before + time.time() - started, "metrics_bytes": metrics.size},
                })
            if progress is not None:
                progress.update(int(update))
    finally:
        metrics.close()
        if progress is not None:
            progress.close()

    if cfg.train.save_params:
        save_params(run_dir / "params_final.npz", primary.params_numpy())
    if summary["status"] == "completed":
        train_loss, train_acc = primary.evaluate("train")
        test_loss, test_acc = primary.evaluate("test")
        summary.update({"final/train_loss": train_loss, "final/test_loss": test_loss})
        if test_acc is not None:
            summary.update({"final/train_acc": train_acc, "final/test_acc": test_acc})
    if len(trainers) == 2:
        summary.update({f"{k}_max": v for k, v in cmp_max.items()})
    if rows:
        for key, title in (("grad_norm/s", "||dL/ds^l|| by layer and step"),
                           ("grad_norm/W", "||dL/dW^l|| by layer and step")):
            matrix = per_layer(rows, key, spec.num_layers)
            steps_logged = [r["step"] for r in rows]
            logger.log_line_series(f"layers/{key}", steps_logged,
                                   {f"L{layer}": list(matrix[layer - 1])
                                    for layer in range(1, spec.num_layers + 1)}, title)
            if cfg.logger.get("heatmap", True):
                logger.log_heatmap(f"heatmap/{key}", matrix, steps_logged, title)
    summary["wall_s"] = wall_before + time.time() - started
    return summary


def save_params(path: Path, params: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **params)
    atomic_write_bytes(path, buffer.getvalue())


def write_summary(run_dir: Path, summary: dict) -> None:
    """summary.json: written last, atomically; the only mark of a finished run. A finished run
    needs its checkpoint no more."""
    atomic_write_json(run_dir / "summary.json", summary)
    if summary.get("status") in FINISHED:
        (run_dir / CHECKPOINT).unlink(missing_ok=True)
