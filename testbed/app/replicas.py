"""K replicas of one shape trained in one program: ``train.replicas=K``.

The replicas share everything that fixes the shape of the computation (model depth, width,
activation and dtype, the data, the batch size, the optimiser and its other hyperparameters, the
number of steps) and may differ in the four *batchable* keys: ``seed`` (initial weights and
minibatch order), ``optim.lr``, ``model.init`` and ``model.init_scale``. Their parameters are
stacked on a leading replica axis (``testbed.engine.init_replica_params``) and every layer runs as
one batched matmul over the K replicas; the optimiser takes one learning rate per replica
(``testbed.training.replicas``: the stacked trainer, whose step is a single run's). On CPU a
large stack runs as consecutive blocks of replicas (``train.replica_block``; by default as many as
keep a block's largest matrix within 4 MiB, see ``testbed.training.replicas.replica_block``), each a
stack of its own. This module is the app's side: the config, the loop, the replicas' folders,
checkpoints and W&B runs.

Replica k equals the same configuration run alone (``testbed.app.run.train``): the same
minibatches (``BatchSampler(n, batch, seed=seed_k)``), the same metrics rows at the same steps, the
same summary, the same divergence rule; float64 agrees to rounding (<= 1e-10 relative, checked by
tests/test_batched.py). A replica that diverges is recorded as its solo run would be and then
dropped from the stack (its parameters, optimiser state and learning rate), so that the others go
on at full speed and nothing of it reaches them.

Each replica writes its own run folder (config.yaml with its own resolved config, metrics.jsonl,
summary.json last) and gets its own W&B run. W&B starts one run per process at a time (the app
finishes a run left open before starting the next), so a replica's W&B calls are kept during
training and replayed into its own run when training ends; its files are written live.

With ``engine=both`` the torch reference is batched too: ``torch.func.vmap`` over
``functional_call`` gives every replica's gradients in one call, and each replica's own
``torch.optim`` optimiser applies them (``torch_clip_and_update``, the end of ``torch_step``).
``engine=torch`` alone is not batched (the sweeper runs such points one job each).

With ``train.checkpoint_every=N`` the job keeps one checkpoint for the whole stack in its own
folder (not the replicas'); a job stopped from outside and started again in the same folder (a
requeued sweep, or ``train.resume=true``) resumes every unfinished replica from it.

Where the replicas' folders are: ``train.replica_dirs`` when set (the batching sweeper,
``hydra/sweeper=batched``, sets it to the sweep's job folders), else ``<run folder>/<k>/``, each
with a ``.hydra/overrides.yaml`` naming its seed (and learning rate, init, init scale when they
vary), so that ``scripts/aggregate.py <run folder>`` reads the replicas as a sweep.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from testbed.app.checkpoint import (
    CHECKPOINT,
    FINISHED,
    config_dict,
    config_differences,
    load_checkpoint,
    plan_run,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from testbed.app.run import (
    CMP_KEYS,
    _is_divergent,
    compared_text,
    discrepancy,
    manual_backend,
    model_spec,
    optimizer_hyper,
    resolve_device,
    save_params,
    seed_everything,
    write_summary,
)
from testbed.app.schema import ConfigError, _check, _finite
from testbed.data import BatchSampler, DataError, load_dataset
from testbed.diagnostics import layer_metrics, per_layer
from testbed.engine import MLPSpec, init_replica_params
from testbed.reference.discrepancy import gradient_error_bounds
from testbed.reference.model import (
    build_torch_loss,
    build_torch_mlp,
    build_torch_optimizer,
    torch_named_params,
)
from testbed.tracking.files import MetricsFile, atomic_write_json, atomic_write_text, read_metrics
from testbed.tracking.wandb_logger import open_logger
from testbed.training.replicas import ReplicaTrainer, replica_block
from testbed.training.state import to_tensors
from testbed.training.step import torch_clip_and_update

log = logging.getLogger("testbed")

# The keys in which replicas of one program may differ; everything else is shared.
BATCHABLE = ("seed", "optim.lr", "model.init", "model.init_scale")
# train.* keys of replica runs (schema: TrainConfig) and their defaults, those of a run alone.
REPLICA_DEFAULTS = {"replicas": 1, "replica_seeds": [], "replica_lrs": [], "replica_inits": [],
                    "replica_init_scales": [], "replica_dirs": []}
SUPPORTED_ENGINES = ("manual", "both")


@dataclass(frozen=True)
class ReplicaPoint:
    """What one replica sets of the four batchable keys."""

    seed: int
    lr: float
    init: str
    init_scale: float

    def apply(self, cfg: DictConfig) -> None:
        cfg.seed, cfg.optim.lr = self.seed, self.lr
        cfg.model.init, cfg.model.init_scale = self.init, self.init_scale


# -- the config ------------------------------------------------------------------------------------

def _list(cfg: DictConfig, key: str) -> list:
    """train.<key> as a plain list ([] when absent or null)."""
    values = OmegaConf.select(cfg, f"train.{key}")
    if values is None:
        return []
    return list(OmegaConf.to_container(values, resolve=True) if OmegaConf.is_config(values) else values)


def wants_replicas(cfg: DictConfig) -> bool:
    """A config that asks for a replica run: train.replicas > 1, or any replica list set."""
    return (OmegaConf.select(cfg, "train.replicas", default=1) or 1) > 1 or any(
        _list(cfg, key) for key in REPLICA_DEFAULTS if key != "replicas")


def validate_replicas(cfg: DictConfig) -> None:
    """The replica keys: lists empty or one value per replica, possible values, a batchable engine."""
    k = OmegaConf.select(cfg, "train.replicas", default=1)
    _check(isinstance(k, int) and k >= 1, "train.replicas", k, "an integer >= 1")
    for key in REPLICA_DEFAULTS:
        if key != "replicas":
            values = _list(cfg, key)
            _check(len(values) in (0, k), f"train.{key}", values,
                   f"empty or a list of {k} values, one per replica (train.replicas={k})")
    seeds, lrs = _list(cfg, "replica_seeds"), _list(cfg, "replica_lrs")
    scales = _list(cfg, "replica_init_scales")
    _check(all(isinstance(s, int) and s >= 0 for s in seeds), "train.replica_seeds", seeds, "integers >= 0")
    _check(all(_finite(lr) and lr > 0 for lr in lrs), "train.replica_lrs", lrs, "finite numbers > 0")
    _check(all(_finite(s) and s >= 0 for s in scales), "train.replica_init_scales", scales,
           "finite numbers >= 0")
    block = OmegaConf.select(cfg, "train.replica_block", default=None)
    _check(block is None or (isinstance(block, int) and block >= 1), "train.replica_block", block,
           "null (automatic) or an integer >= 1")
    if wants_replicas(cfg):
        engine = str(cfg.engine.name)
        _check(engine in SUPPORTED_ENGINES, "engine", engine,
               "manual or both with train.replicas > 1 (the torch reference alone is not batched)")


def replica_points(cfg: DictConfig) -> list[ReplicaPoint]:
    """The K replicas' batchable values: the lists, or by default seed + k and the config's own."""
    k = OmegaConf.select(cfg, "train.replicas", default=1)
    k = max([k] + [len(_list(cfg, key)) for key in REPLICA_DEFAULTS if key != "replicas"])
    seeds = _list(cfg, "replica_seeds") or [cfg.seed + r for r in range(k)]
    lrs = _list(cfg, "replica_lrs") or [cfg.optim.lr] * k
    inits = [str(i) for i in _list(cfg, "replica_inits")] or [str(cfg.model.init)] * k
    scales = _list(cfg, "replica_init_scales") or [cfg.model.init_scale] * k
    return [ReplicaPoint(int(s), float(lr), init, float(scale))
            for s, lr, init, scale in zip(seeds, lrs, inits, scales, strict=True)]


def point_config(cfg: DictConfig, point: ReplicaPoint) -> DictConfig:
    """The config of one replica as a run alone: its batchable values, the replica keys at default."""
    out = copy.deepcopy(cfg)
    OmegaConf.set_readonly(out, False)
    point.apply(out)
    for key, default in REPLICA_DEFAULTS.items():
        if key in out.train:
            out.train[key] = default
    return out


# -- the torch reference, batched with torch.func --------------------------------------------------

class StackedTorchReference:
    """K torch.nn models (one torch.optim optimiser each, with its replica's learning rate) whose
    gradients come from one ``vmap(grad(functional_call))`` over their stacked parameters."""

    def __init__(self, spec: MLPSpec, initial: dict, device: str, dtype: str, optimizer: str,
                 hyper: dict, lrs: list[float], clip_norm: float | None = None):
        self.spec, self.device, self.clip_norm = spec, device, clip_norm
        count = len(lrs)
        self.models = [build_torch_mlp(spec, {key: value[k] for key, value in initial.items()},
                                       device=device, dtype=dtype) for k in range(count)]
        self.params = [torch_named_params(model) for model in self.models]
        self.optimizers = [build_torch_optimizer(optimizer, model.parameters(), **{**hyper, "lr": float(lr)})
                           for model, lr in zip(self.models, lrs, strict=True)]
        template = self.models[0]
        by_identity = {id(p): name for name, p in template.named_parameters()}
        self.module_names = {key: by_identity[id(p)] for key, p in self.params[0].items()}
        loss_fn = build_torch_loss(spec.loss)

        def loss_of(params: dict, x, y):
            return loss_fn(torch.func.functional_call(template, params, (x,)), y)

        self._grads_and_losses = torch.func.vmap(torch.func.grad_and_value(loss_of))
        self.dtype = next(template.parameters()).dtype

    def load_data(self, x_train, y_train, x_test, y_test) -> None:
        def targets(y):
            y = torch.as_tensor(np.asarray(y)).to(self.device)
            return y.long() if self.spec.loss == "cross_entropy" else y.to(self.dtype)

        self.data = {"train": (torch.as_tensor(np.asarray(x_train)).to(self.device, self.dtype),
                               targets(y_train))}

    def step(self, idx: np.ndarray, update: bool = True) -> np.ndarray:
        """Every replica's step on its own minibatch, ``idx`` (K, B): the gradients from one vmap
        call, then each replica's clipping and update; returns the K losses."""
        x, y = self.data["train"]
        i = torch.as_tensor(idx, device=self.device)
        stacked = {self.module_names[key]: torch.stack([p[key].detach() for p in self.params])
                   for key in self.params[0]}
        grads, losses = self._grads_and_losses(stacked, x[i], y[i])
        for k, (model, params) in enumerate(zip(self.models, self.params, strict=True)):
            for key, param in params.items():
                param.grad = grads[self.module_names[key]][k].clone()
            torch_clip_and_update(model, self.optimizers[k], self.clip_norm, update)
        return losses.detach().cpu().numpy().astype(np.float64)

    def compare(self, k: int, manual: ReplicaTrainer, manual_loss: float, torch_loss: float,
                bounds: dict | None = None) -> dict:
        """Replica k's ``cmp/*``, as ``testbed.app.run.compare`` for a run alone (``bounds``: replica
        k's of ``replica_gradient_bounds``, on logged steps)."""
        grads = {key: p.grad for key, p in self.params[k].items()}
        params = {key: p.detach() for key, p in self.params[k].items()}
        return discrepancy(manual_loss, torch_loss, manual.replica_grads(k), grads, manual.replica_params(k),
                           params, bounds, self.clip_norm, manual.replica_grad_norm(k))

    def state_dict(self) -> dict:
        return {"models": [to_tensors(dict(model.state_dict())) for model in self.models],
                "optimizers": [to_tensors(optimizer.state_dict()) for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for model, optimizer, model_state, optimizer_state in zip(
                self.models, self.optimizers, state["models"], state["optimizers"], strict=True):
            model.load_state_dict(model_state)  # copies into the existing parameters
            optimizer.load_state_dict(optimizer_state)

    def keep(self, rows: np.ndarray) -> None:
        self.models = [self.models[r] for r in rows]
        self.params = [self.params[r] for r in rows]
        self.optimizers = [self.optimizers[r] for r in rows]


def replica_gradient_bounds(spec: MLPSpec, trainer: ReplicaTrainer, idx: np.ndarray) -> list[dict]:
    """Before the step on ``idx`` (K, B): each replica's rounding-error bound of each of its
    gradients (``testbed.reference.discrepancy``), computed a block of replicas at a time."""
    found = []
    for params, (x, y) in trainer.minibatches(idx):
        bounds = gradient_error_bounds(spec, params, x, y)
        found += [{key: float(value[k]) for key, value in bounds.items()} for k in range(x.shape[0])]
    return found


# -- the loop --------------------------------------------------------------------------------------

@dataclass
class _Replica:
    """One replica's place in the loop: its outputs and what run.train keeps for a run."""

    k: int
    point: ReplicaPoint
    run_dir: Path
    logger: Any
    sampler: BatchSampler
    metrics: MetricsFile
    summary: dict
    rows: list
    cmp_max: dict
    log: logging.Logger
    initial_loss: float | None = None
    last_finite_loss: float | None = None
    wall_s: float | None = None
    final_params: dict | None = None


def replica_log(k: int) -> logging.Logger:
    """Replica k's own log (``run_replica_job`` sends it to the replica's folder); not the job's."""
    logger = logging.getLogger(f"testbed.replica{k}")
    logger.propagate = False
    return logger


def _load_data(cfg: DictConfig):
    options = dict(cfg.data.options)
    if cfg.data.path:
        options["path"] = cfg.data.path
    return load_dataset(str(cfg.data.name), seed=cfg.data.seed, **options)


def train_replicas(cfg: DictConfig, points: list[ReplicaPoint], run_dirs: list[Path], loggers: list,
                   checkpoint_dir: Path | None = None, resume: dict | None = None) -> list[dict]:
    """Train the K ``points`` of ``cfg``'s shape in one batched program; return their summaries.

    Replica k writes config.yaml (its own resolved config), metrics.jsonl and (with
    train.save_params) params_*.npz into ``run_dirs[k]`` and logs to ``loggers[k]``, exactly as
    ``testbed.app.run.train`` does for that config alone; summary.json is the caller's to write.

    With ``checkpoint_dir`` and ``train.checkpoint_every=N``, the whole program's state (the stack,
    which replicas are still in it, every replica's loop state and minibatch order, the random
    generators) goes to ``checkpoint_dir/checkpoint.pt`` every N steps; ``resume`` (that checkpoint)
    continues from it, and every replica ends as it would have without the stop (bitwise on CPU).
    """
    started = time.time()
    if not (len(points) == len(run_dirs) == len(loggers)) or not points:
        raise ValueError(f"{len(points)} points, {len(run_dirs)} run folders, {len(loggers)} loggers")
    engine = str(cfg.engine.name)
    if engine not in SUPPORTED_ENGINES:
        raise ConfigError(f"engine={engine} is not allowed with replicas; engine must be manual or both")
    seed_everything(points[0].seed)  # nothing draws from the global generators; as run.train does
    device = resolve_device(str(cfg.device))
    dataset = _load_data(cfg)
    spec = model_spec(cfg, dataset)
    initial = init_replica_params(spec, [p.seed for p in points], [p.init for p in points],
                                  [p.init_scale for p in points])
    name, hyper = optimizer_hyper(cfg.optim)
    lrs, dtype = [p.lr for p in points], str(cfg.model.dtype)
    backend = manual_backend(cfg, device)
    block = replica_block(spec, cfg.data.batch_size, backend, cfg.train.get("replica_block"))
    trainer = ReplicaTrainer(spec, initial, backend, name, hyper, lrs, cfg.optim.clip_norm,
                             cuda_graph=cfg.engine.cuda_graph, block=block, fuse_sgd=engine == "manual")
    if len(trainer.blocks) > 1:
        log.info("%d replicas in %d blocks of at most %d (train.replica_block=%s)", len(points),
                 len(trainer.blocks), block, cfg.train.get("replica_block") or "null: automatic")
    reference = (StackedTorchReference(spec, initial, device, dtype, name, hyper, lrs, cfg.optim.clip_norm)
                 if engine == "both" else None)
    for t in (trainer, reference):
        if t is not None:
            t.load_data(dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
    n = len(dataset.x_train)

    saved = resume["loop"]["replicas"] if resume is not None else None
    replicas = []
    for k, (point, run_dir, logger) in enumerate(zip(points, run_dirs, loggers, strict=True)):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        for leftover in run_dir.glob(".*.tmp"):  # an atomic write cut short by a kill
            leftover.unlink(missing_ok=True)
        if resume is None:
            # a new run: nothing from an earlier run in this folder may pass for this one's (as run.train)
            for stale in ("summary.json", CHECKPOINT, "params_init.npz", "params_final.npz"):
                (run_dir / stale).unlink(missing_ok=True)
            atomic_write_text(run_dir / "config.yaml",
                              OmegaConf.to_yaml(point_config(cfg, point), resolve=True))
            if cfg.train.save_params:
                save_params(run_dir / "params_init.npz", {key: value[k] for key, value in initial.items()})
        metrics = MetricsFile(run_dir / "metrics.jsonl",
                              resume_at=saved[k]["metrics_bytes"] if saved is not None else None)
        replicas.append(_Replica(
            k, point, run_dir, logger, BatchSampler(n, cfg.data.batch_size, seed=point.seed), metrics,
            {"status": "completed", "steps": 0, "device": device, "num_layers": spec.num_layers},
            [], dict.fromkeys(CMP_KEYS, 0.0), replica_log(k)))
    sampler = replicas[0].sampler
    steps = cfg.train.epochs * sampler.batches_per_epoch if cfg.train.epochs else cfg.train.steps
    # plain values: an OmegaConf lookup per replica and step would cost more than a small step
    log_every, keep_params = cfg.train.log_every, cfg.train.save_params
    checkpoint_every = cfg.train.checkpoint_every if checkpoint_dir is not None else 0
    limits = SimpleNamespace(divergence_factor=cfg.train.divergence_factor, max_loss=cfg.train.max_loss)

    active, start = list(replicas), 0  # active: in stack order
    if resume is not None:
        start, started = resume["loop"]["step"], started - resume["loop"]["wall_s"]
        for r in replicas:
            _restore_replica(r, saved[r.k], start)
        active = [replicas[k] for k in resume["loop"]["active"]]
        positions = np.array(resume["loop"]["active"], dtype=np.int64)
        trainer.keep(positions)
        trainer.load_state_dict(resume["trainer"])
        if reference is not None:
            reference.keep(positions)
            reference.load_state_dict(resume["reference"])
        set_rng_state(resume["rng"])
        log.info("resumed %d replicas (%d in the stack) at step %d of %d", len(replicas), len(active),
                 start, steps)
    try:
        for step in range(start, steps + 1):
            idx = np.stack([r.sampler.next() for r in active])
            log_now = step % log_every == 0 or step == steps
            update = step < steps
            # the test split sees the parameters this step's losses are of (before the update), as run.train
            test_losses, test_accs = trainer.evaluate("test") if log_now else (None, None)
            bounds = (replica_gradient_bounds(spec, trainer, idx) if reference is not None and log_now
                      else [None] * len(active))
            losses = trainer.step(idx, update=update, record=log_now)
            torch_losses = reference.step(idx, update=update) if reference is not None else None
            records = trainer.replica_records() if log_now else None
            going_on, rows = [], []
            for j, r in enumerate(active):
                loss = float(losses[j])
                compared = (reference.compare(j, trainer, loss, float(torch_losses[j]), bounds[j])
                            if reference is not None else {})
                for key, value in compared.items():
                    r.cmp_max[key] = max(r.cmp_max.get(key, 0.0), value) if math.isfinite(value) else math.inf
                r.initial_loss = loss if r.initial_loss is None else r.initial_loss
                if _is_divergent(loss, r.initial_loss, limits):
                    r.summary.update(status="diverged", diverged_at_step=step,
                                     last_finite_loss=r.last_finite_loss, diverged_loss=loss)
                    row = {"step": step, "train/loss": loss, "status": "diverged", **compared}
                    r.metrics.write(row)
                    r.logger.log(row, step)
                    r.wall_s = time.time() - started
                    if keep_params:
                        r.final_params = trainer.params_numpy(j)
                    log.info("replica %d (seed %d, lr %g) diverged at step %d: loss %s (last finite %s)",
                             r.k, r.point.seed, r.point.lr, step, loss, r.last_finite_loss)
                    r.log.info("diverged at step %d: loss %s (last finite %s)", step, loss,
                               r.last_finite_loss)
                    continue
                r.last_finite_loss = loss
                r.summary["steps"] = step if not update else step + 1
                going_on.append(j)
                if log_now:
                    rows.append((j, r, {"step": step, "epoch": r.sampler.epoch, "train/loss": loss},
                                 layer_metrics(spec.activation, **records[j]), compared))
            if len(going_on) < len(active):  # drop the diverged: the rest go on without them
                keep = np.array(going_on, dtype=np.int64)
                trainer.keep(keep)
                if reference is not None:
                    reference.keep(keep)
                active = [active[j] for j in going_on]
            if not active:
                break
            if log_now:
                for j, r, row, layers, compared in rows:  # j: the replica's place in the stack it ran in
                    row["test/loss"] = float(test_losses[j])
                    if test_accs is not None:
                        row["test/acc"] = float(test_accs[j])
                    row.update(layers)
                    row.update(compared)
                    r.metrics.write(row)
                    r.logger.log(row, step)
                    r.rows.append(row)
                    _log_row(r.log, row, compared)
                kept = np.array(going_on)
                _log_step(step, losses[kept], test_accs[kept] if test_accs is not None else None, len(active),
                          len(replicas))
            if checkpoint_every and update and (step + 1) % checkpoint_every == 0:
                save_checkpoint(checkpoint_dir, {
                    "config": OmegaConf.to_yaml(cfg, resolve=True),
                    "run_dirs": [str(r.run_dir) for r in replicas],
                    "trainer": trainer.state_dict(),
                    "reference": reference.state_dict() if reference is not None else None,
                    "rng": rng_state(device),
                    "loop": {"step": step + 1, "active": [r.k for r in active],
                             "wall_s": time.time() - started,
                             "replicas": [_replica_state(r) for r in replicas]},
                })
    finally:
        for r in replicas:
            r.metrics.close()

    if active:  # the completed: final parameters and evaluation, all at once
        train_losses, train_accs = trainer.evaluate("train")
        test_losses, test_accs = trainer.evaluate("test")
        for j, r in enumerate(active):
            r.wall_s = time.time() - started
            if keep_params:
                r.final_params = trainer.params_numpy(j)
            r.summary.update({"final/train_loss": float(train_losses[j]),
                              "final/test_loss": float(test_losses[j])})
            if test_accs is not None:
                r.summary.update({"final/train_acc": float(train_accs[j]),
                                  "final/test_acc": float(test_accs[j])})
    summaries = []
    for r in replicas:
        if r.final_params is not None:
            save_params(r.run_dir / "params_final.npz", r.final_params)
        if reference is not None:
            r.summary.update({f"{k}_max": v for k, v in r.cmp_max.items()})
        _log_layer_charts(r.logger, r.rows, spec.num_layers, cfg.logger.get("heatmap", True))
        r.summary["wall_s"] = r.wall_s
        summaries.append(r.summary)
    return summaries


def _replica_state(r: _Replica) -> dict:
    """What a checkpoint keeps of one replica's place in the loop (its outputs are in its folder)."""
    return {"sampler": r.sampler.state_dict(), "summary": dict(r.summary), "cmp_max": dict(r.cmp_max),
            "initial_loss": r.initial_loss, "last_finite_loss": r.last_finite_loss,
            "metrics_bytes": r.metrics.size, "wall_s": r.wall_s,
            "final_params": to_tensors(r.final_params) if r.final_params is not None else None}


def _restore_replica(r: _Replica, state: dict, step: int) -> None:
    """``_replica_state`` back into ``r``; its logger gets the rows written before the checkpoint."""
    r.sampler.load_state_dict(state["sampler"])
    r.summary, r.cmp_max = dict(state["summary"]), dict(state["cmp_max"])
    r.summary["resumed_from"] = [*r.summary.get("resumed_from", []), step]
    r.initial_loss, r.last_finite_loss = state["initial_loss"], state["last_finite_loss"]
    r.wall_s = state["wall_s"]
    if state["final_params"] is not None:
        r.final_params = {key: value.numpy() for key, value in state["final_params"].items()}
    written = read_metrics(r.run_dir / "metrics.jsonl", numbers=True)
    for row in written:
        r.logger.log(row, row["step"])
    r.rows = [row for row in written if "status" not in row]  # the logged steps (not a divergence)


def _log_row(logger: logging.Logger, row: dict, compared: dict) -> None:
    """The line run.train logs at a logged step."""
    cmp_text = compared_text(compared)
    acc_text = f" test acc {row['test/acc']:.3f}" if "test/acc" in row else ""
    logger.info("step %5d  loss %.4f  test loss %.4f%s%s", row["step"], row["train/loss"], row["test/loss"],
                acc_text, cmp_text)


def _log_step(step: int, losses: np.ndarray, accs: np.ndarray | None, active: int, count: int) -> None:
    acc_text = f"  test acc {np.min(accs):.3f} .. {np.max(accs):.3f}" if accs is not None else ""
    log.info("step %5d  %d/%d replicas  loss %.4f .. %.4f%s", step, active, count, np.min(losses),
             np.max(losses), acc_text)


def _log_layer_charts(logger, rows: list[dict], num_layers: int, heatmap: bool) -> None:
    """The per-layer line charts and heatmaps that run.train logs at the end of a run."""
    if not rows:
        return
    for key, title in (("grad_norm/s", "||dL/ds^l|| by layer and step"),
                       ("grad_norm/W", "||dL/dW^l|| by layer and step")):
        matrix = per_layer(rows, key, num_layers)
        steps_logged = [r["step"] for r in rows]
        logger.log_line_series(f"layers/{key}", steps_logged,
                               {f"L{layer}": list(matrix[layer - 1]) for layer in range(1, num_layers + 1)},
                               title)
        if heatmap:
            logger.log_heatmap(f"heatmap/{key}", matrix, steps_logged, title)


# -- the app's job: folders, plans, W&B, summaries -------------------------------------------------

class DeferredLogger:
    """A replica's W&B calls, kept until training ends and then replayed into its own run."""

    where: str | None = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def log(self, metrics: dict, step: int) -> None:
        self.calls.append(("log", (dict(metrics), step), {}))

    def log_heatmap(self, *args, **kwargs) -> None:
        self.calls.append(("log_heatmap", args, kwargs))

    def log_line_series(self, *args, **kwargs) -> None:
        self.calls.append(("log_line_series", args, kwargs))

    def finish(self, summary: dict | None = None, exit_code: int = 0) -> None:
        pass

    def replay(self, logger) -> None:
        for name, args, kwargs in self.calls:
            getattr(logger, name)(*args, **kwargs)


@dataclass
class _Job:
    """A replica as a job: where it writes, its config, and the name of its W&B run."""

    k: int
    point: ReplicaPoint
    run_dir: Path
    cfg: DictConfig
    wandb_name: str
    wandb_group: str


def _override_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _replica_jobs(cfg: DictConfig, hc, multirun: bool) -> list[_Job]:
    points = replica_points(cfg)
    given_dirs = _list(cfg, "replica_dirs")
    group_dir = Path(hc.runtime.output_dir)
    sweep_name = Path(hc.sweep.dir).name if multirun else None
    base_group = cfg.logger.group or (f"{cfg.name}/{sweep_name}" if multirun else cfg.name)
    jobs = []
    for k, point in enumerate(points):
        point_cfg = point_config(cfg, point)
        if given_dirs:  # the batching sweeper's job folders: named as the sweep's jobs
            run_dir = Path(given_dirs[k])
            hydra_file = run_dir / ".hydra" / "hydra.yaml"
            job = OmegaConf.load(hydra_file).hydra.job if hydra_file.is_file() else None
            num = job.num if job is not None else k
            dirname = job.override_dirname if job is not None else ""
            name = f"{num}:{dirname or cfg.name}"
            group = base_group
        else:  # <run folder>/<k>/, readable as a sweep of the replicas
            run_dir = group_dir / str(k)
            overrides = _replica_overrides(cfg, hc, point)
            _write_replica_hydra(run_dir, point_cfg, overrides)
            dirname = ",".join(sorted(o for o in overrides if not o.startswith("seed=")))
            name = f"replica{k}:{dirname or cfg.name}"
            group = cfg.logger.group or f"{base_group}/{group_dir.name}"
        jobs.append(_Job(k, point, run_dir, point_cfg, name, group))
    return jobs


def _replica_overrides(cfg: DictConfig, hc, point: ReplicaPoint) -> list[str]:
    """The command line's overrides with replica k's batchable values in place of the lists."""
    replica_keys = {f"train.{key}" for key in REPLICA_DEFAULTS}
    kept = [o for o in hc.overrides.task
            if o.split("=", 1)[0].lstrip("+~") not in replica_keys | set(BATCHABLE)]
    own = [f"seed={point.seed}"]
    for key, list_key, value in (("optim.lr", "replica_lrs", point.lr),
                                 ("model.init", "replica_inits", point.init),
                                 ("model.init_scale", "replica_init_scales", point.init_scale)):
        if _list(cfg, list_key) or any(o.split("=", 1)[0].lstrip("+~") == key for o in hc.overrides.task):
            own.append(f"{key}={_override_value(value)}")
    return [*kept, *own]


def _write_replica_hydra(run_dir: Path, point_cfg: DictConfig, overrides: list[str]) -> None:
    hydra_dir = run_dir / ".hydra"
    atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(point_cfg))
    atomic_write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))


def _open_wandb(cfg: DictConfig, job: _Job, run_dir: Path):
    if cfg.logger.name == "none":
        return open_logger("none")
    tags = list(cfg.logger.tags) + [str(cfg.engine.name), str(cfg.model.activation), str(cfg.optim.name),
                                    str(cfg.data.name)]
    return open_logger(str(cfg.logger.name), run_dir=run_dir,
                       config=OmegaConf.to_container(job.cfg, resolve=True),
                       project=cfg.logger.project, group=job.wandb_group, job_type=str(cfg.engine.name),
                       name=job.wandb_name, tags=tags, mode=str(cfg.logger.mode), entity=cfg.logger.entity,
                       init_timeout=cfg.logger.init_timeout)


def _log_files(jobs: list[_Job]) -> list[logging.Handler]:
    """Each replica's log file in its folder, named and formatted as the job's own (Hydra's
    ``<job name>.log``), fed by ``replica_log(position)``."""
    job_file = next((h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)), None)
    name = Path(job_file.baseFilename).name if job_file else "main.log"
    formatter = (job_file.formatter if job_file and job_file.formatter
                 else logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handlers = []
    for position, job in enumerate(jobs):
        job.run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(job.run_dir / name)
        handler.setFormatter(formatter)
        logger = replica_log(position)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        handlers.append(handler)
    return handlers


def run_replica_job(cfg: DictConfig) -> list[dict]:
    """The app's job for a replica config (``main.app`` hands it over when ``wants_replicas``).

    Every replica is a run of its own: a finished one (same config, completed or diverged) is
    left alone, as a sweep job would be; the others train together, and each ends with its
    summary.json, written last. The job's own folder gets config.yaml and, last, a summary.json
    listing the replicas.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    started = time.time()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    group_dir = Path(hc.runtime.output_dir)
    try:
        validate_replicas(cfg)  # preflight checks the command line; a sweeper's jobs come here unchecked
    except ConfigError as error:
        if not multirun:
            print(f"testbed: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    atomic_write_text(group_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    (group_dir / "summary.json").unlink(missing_ok=True)
    jobs = _replica_jobs(cfg, hc, multirun)
    sweep_points = bool(_list(cfg, "replica_dirs"))
    summaries: dict[int, dict] = {}
    todo, reasons = [], []
    for job in jobs:
        plan = plan_run(job.run_dir, job.cfg, multirun=multirun or sweep_points)
        if plan.action == "skip":
            log.info("replica %d (%s): %s", job.k, job.run_dir, plan.reason)
            summaries[job.k] = plan.summary
            continue
        todo.append(job)
        reasons.append(plan.reason)
    log.info("training %d replicas in one program (%d already finished)", len(todo), len(jobs) - len(todo))
    if not todo:
        _write_group_summary(group_dir, jobs, summaries, started)
        (group_dir / CHECKPOINT).unlink(missing_ok=True)
        return [summaries[job.k] for job in jobs]
    resume_on = cfg.train.resume if cfg.train.resume is not None else (multirun or sweep_points)
    checkpoint, why = _group_checkpoint(group_dir, cfg, todo) if resume_on else (None, "")
    if checkpoint is None:
        (group_dir / CHECKPOINT).unlink(missing_ok=True)  # the stack starts afresh: no stale state
    if why:
        log.info("replicas: %s", why)
        reasons = [why] * len(todo)

    handlers = _log_files(todo)
    try:
        for position, reason in enumerate(reasons):
            if reason:
                replica_log(position).info("%s", reason)
        deferred = [DeferredLogger() for _ in todo]
        error_line = None
        try:
            results = train_replicas(cfg, [j.point for j in todo], [j.run_dir for j in todo], deferred,
                                     checkpoint_dir=group_dir, resume=checkpoint)
        except (ConfigError, DataError) as error:
            error_line = str(error)
            results = [{"status": "failed", "error": error_line} for _ in todo]
        except Exception as error:
            if not multirun:
                raise
            log.exception("replica run failed; the sweep goes on")
            results = [{"status": "failed", "error": f"{type(error).__name__}: {error}"} for _ in todo]
        for position, (job, logger, summary) in enumerate(zip(todo, deferred, results, strict=True)):
            wandb = _open_wandb(cfg, job, job.run_dir)
            logger.replay(wandb)
            wandb.finish(summary, exit_code=0 if summary["status"] != "failed" else 1)
            write_summary(job.run_dir, summary)  # last: the mark of a finished run
            summaries[job.k] = summary
            where = getattr(wandb, "where", None)
            replica_log(position).info(
                "%s in %.1f s: outputs in %s%s", summary["status"], summary.get("wall_s", 0.0), job.run_dir,
                f"; W&B run in {where} (upload: wandb sync {where})" if where else "")
    finally:
        for position, handler in enumerate(handlers):
            replica_log(position).removeHandler(handler)
            handler.close()
    _write_group_summary(group_dir, jobs, summaries, started)
    if all(summaries[j.k].get("status") in FINISHED for j in jobs):
        (group_dir / CHECKPOINT).unlink(missing_ok=True)  # finished runs need their checkpoint no more
    log.info("replicas: %s", ", ".join(f"{j.k} {summaries[j.k]['status']}" for j in jobs))
    if error_line is not None and not multirun:
        print(f"testbed: error: {error_line}", file=sys.stderr)
        raise SystemExit(2) from None
    return [summaries[job.k] for job in jobs]


def _group_checkpoint(group_dir: Path, cfg: DictConfig, todo: list[_Job]) -> tuple[dict | None, str]:
    """The replica program's checkpoint in ``group_dir`` if it belongs to this config and these
    replicas (and their metrics.jsonl are as long as it says), and one line on what happens."""
    checkpoint = load_checkpoint(group_dir)
    if checkpoint is None:
        return None, ""
    differences = config_differences(config_dict(checkpoint["config"]), config_dict(cfg))
    if differences:
        return None, f"the checkpoint in {group_dir} is of another config ({differences[0]}): starting afresh"
    if checkpoint["run_dirs"] != [str(job.run_dir) for job in todo]:
        return None, f"the checkpoint in {group_dir} is of other replicas: starting afresh"
    for job, saved in zip(todo, checkpoint["loop"]["replicas"], strict=True):
        metrics = job.run_dir / "metrics.jsonl"
        if not metrics.is_file() or metrics.stat().st_size < saved["metrics_bytes"]:
            return None, f"{metrics} is shorter than the checkpoint says: starting afresh"
    return checkpoint, f"resuming from the checkpoint at step {checkpoint['loop']['step']}"


def _write_group_summary(group_dir: Path, jobs: list[_Job], summaries: dict, started: float) -> None:
    statuses = [summaries.get(j.k, {}).get("status", "failed") for j in jobs]
    atomic_write_json(group_dir / "summary.json", {
        "status": "failed" if "failed" in statuses else "completed",
        "replicas": [{"run_dir": str(j.run_dir), "seed": j.point.seed, "lr": j.point.lr,
                      "init": j.point.init, "init_scale": j.point.init_scale, "status": status}
                     for j, status in zip(jobs, statuses, strict=True)],
        "wall_s": time.time() - started,
    })

