"""Typed config schemas (dataclasses in Hydra's ConfigStore).

A typo, a value outside an Enum, or a wrong type fails while Hydra composes;
impossible values (lr <= 0, width 0, depth -1) fail in ``validate``. Both run
before any work (see ``testbed.app.preflight``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore

Activation = StrEnum("Activation", {n: n for n in (
    "identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu", "gelu_tanh",
    "silu", "softplus", "softsign")})
Init = StrEnum("Init", {n: n for n in (
    "standard", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
    "lecun_normal", "orthogonal", "normal", "uniform", "zeros", "constant")})
BiasInit = StrEnum("BiasInit", {n: n for n in ("zeros", "normal", "standard")})
DType = StrEnum("DType", {n: n for n in ("float32", "float64")})
DataName = StrEnum("DataName", {n: n for n in (
    "digits", "mnist1d", "teacher", "spirals", "xor", "sine", "blobs", "idx")})
OptimName = StrEnum("OptimName", {n: n for n in ("sgd", "adam", "adamw", "rmsprop", "adagrad")})
EngineName = StrEnum("EngineName", {n: n for n in ("manual", "torch", "both")})
ArrayBackend = StrEnum("ArrayBackend", {n: n for n in ("torch", "numpy")})
Device = StrEnum("Device", {n: n for n in ("cpu", "cuda", "auto")})
LoggerName = StrEnum("LoggerName", {n: n for n in ("wandb", "none")})
WandbMode = StrEnum("WandbMode", {n: n for n in ("offline", "online", "disabled")})


@dataclass
class ModelConfig:
    depth: int = 2  # hidden layers; layers L1 (next to the input) .. L{depth+1} (output)
    width: int = 64
    activation: Activation = Activation.tanh
    activation_params: dict[str, Any] = field(default_factory=dict)  # slope, alpha, beta
    init: Init = Init.xavier_uniform
    init_scale: float = 1.0  # multiplies the init's std: > 1 reaches the exploding regime
    init_params: dict[str, Any] = field(default_factory=dict)  # std, a, gain, mode, value
    bias_init: BiasInit = BiasInit.zeros
    bias_std: float = 0.0
    dtype: DType = DType.float64


@dataclass
class DataConfig:
    name: DataName = DataName.digits
    batch_size: int = 64
    seed: int = 0  # the data's own seed (split, synthetic draw); `seed` varies the init only
    path: str | None = None  # for idx: the folder with the IDX files
    options: dict[str, Any] = field(default_factory=dict)  # dataset-specific (noise, n_train, ...)


@dataclass
class OptimConfig:
    name: OptimName = OptimName.sgd
    lr: float = 0.1
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float | None = None  # None: the optimiser's own default
    alpha: float = 0.99  # rmsprop's smoothing constant
    centered: bool = False
    clip_norm: float | None = None  # global-norm gradient clipping


@dataclass
class TrainConfig:
    steps: int = 300
    epochs: int | None = None  # when set, steps = epochs * batches per epoch
    log_every: int = 10
    divergence_factor: float = 1e4  # diverged when loss > factor * max(initial loss, 1)
    max_loss: float | None = None  # an absolute loss ceiling, when set
    progress: bool = True  # a progress bar, only on a terminal and never under CI
    checkpoint_every: int = 0  # N > 0: checkpoint.pt every N steps (0: never)
    resume: bool | None = None  # continue the run in the output folder; null: in sweeps yes, else no
    save_params: bool = False  # params_init.npz and params_final.npz, for analyses after training
    # K > 1: K replicas of this shape trained in one batched program (testbed.app.replicas), engine
    # manual or both; per replica (empty: seed + k, and optim.lr, model.init, model.init_scale):
    replicas: int = 1
    replica_seeds: list[int] = field(default_factory=list)
    replica_lrs: list[float] = field(default_factory=list)
    replica_inits: list[Init] = field(default_factory=list)
    replica_init_scales: list[float] = field(default_factory=list)
    replica_dirs: list[str] = field(default_factory=list)  # set by hydra/sweeper=batched: job folders
    # replicas per batched block (blocks step one after another); null: all on CUDA, and on CPU as many
    # as keep a block's largest matrix within 4 MiB (testbed.training.replicas.replica_block)
    replica_block: int | None = None


@dataclass
class EngineConfig:
    name: EngineName = EngineName.both
    backend: ArrayBackend = ArrayBackend.torch  # the manual engine's arrays
    cuda_graph: bool = False


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.wandb
    project: str = "testbed"
    entity: str | None = None
    mode: WandbMode = WandbMode.offline
    group: str | None = None  # default: the experiment name (and the sweep's folder)
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 30.0
    heatmap: bool = True


@dataclass
class Config:
    name: str = "default"  # the experiment's name: output folders, W&B group
    seed: int = 0
    device: Device = Device.cpu
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    analysis: dict[str, Any] = field(default_factory=dict)  # preset-specific, read by experiments


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, node in (("model", ModelConfig), ("data", DataConfig), ("optim", OptimConfig),
                        ("engine", EngineConfig), ("logger", LoggerConfig)):
        cs.store(group=group, name=f"{group}_schema", node=node)


class ConfigError(ValueError):
    """A config that cannot run: the message is one line naming the key and what is allowed."""


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed; {key} must be {allowed}")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def validate(cfg: Any) -> None:
    """Impossible values, each with a one-line message (the types were checked by the schema)."""
    m, d, o, t = cfg.model, cfg.data, cfg.optim, cfg.train
    _check(cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    _check(d.seed >= 0, "data.seed", d.seed, "an integer >= 0")
    _check(m.depth >= 0, "model.depth", m.depth, "an integer >= 0 (0 is a linear model)")
    _check(m.width >= 1, "model.width", m.width, "an integer >= 1")
    _check(_finite(m.init_scale) and m.init_scale >= 0, "model.init_scale", m.init_scale,
           "a finite number >= 0")
    _check(_finite(m.bias_std) and m.bias_std >= 0, "model.bias_std", m.bias_std, "a finite number >= 0")
    _check(d.batch_size >= 1, "data.batch_size", d.batch_size, "an integer >= 1")
    _check(_finite(o.lr) and o.lr > 0, "optim.lr", o.lr, "a finite number > 0")
    _check(_finite(o.momentum) and 0 <= o.momentum < 1, "optim.momentum", o.momentum, "in [0, 1)")
    _check(_finite(o.dampening) and 0 <= o.dampening <= 1, "optim.dampening", o.dampening, "in [0, 1]")
    _check(_finite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", o.weight_decay,
           "a finite number >= 0")
    _check(len(o.betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in o.betas), "optim.betas",
           list(o.betas), "two numbers in [0, 1)")
    _check(o.eps is None or (_finite(o.eps) and o.eps > 0), "optim.eps", o.eps, "null or a number > 0")
    _check(_finite(o.alpha) and 0 <= o.alpha < 1, "optim.alpha", o.alpha, "in [0, 1)")
    _check(o.clip_norm is None or (_finite(o.clip_norm) and o.clip_norm > 0), "optim.clip_norm",
           o.clip_norm, "null or a finite number > 0")
    _check(not o.nesterov or (o.momentum > 0 and o.dampening == 0), "optim.nesterov", o.nesterov,
           "false unless optim.momentum > 0 and optim.dampening = 0")
    _check(t.steps >= 0, "train.steps", t.steps, "an integer >= 0")
    _check(t.epochs is None or t.epochs >= 1, "train.epochs", t.epochs, "null or an integer >= 1")
    _check(t.log_every >= 1, "train.log_every", t.log_every, "an integer >= 1")
    _check(_finite(t.divergence_factor) and t.divergence_factor > 1, "train.divergence_factor",
           t.divergence_factor, "a finite number > 1")
    _check(t.max_loss is None or (_finite(t.max_loss) and t.max_loss > 0), "train.max_loss", t.max_loss,
           "null or a finite number > 0")
    _check(t.checkpoint_every >= 0, "train.checkpoint_every", t.checkpoint_every, "an integer >= 0")
    _check(_enum_value(d.name) != "idx" or bool(d.path), "data.path", d.path,
           "the folder holding the IDX files when data=idx")
    _check(_enum_value(cfg.engine.backend) != "numpy" or _enum_value(cfg.device) != "cuda",
           "engine.backend", "numpy", "torch when device=cuda (numpy runs on the CPU only)")
    from testbed.app.replicas import validate_replicas  # here: testbed.app.replicas imports this module

    if getattr(cfg.engine, "cuda_graph", False):
        _validate_cuda_graph(cfg)
    validate_replicas(cfg)


def _validate_cuda_graph(cfg: Any) -> None:
    """engine.cuda_graph=true: the hand-written step on torch tensors on CUDA."""
    device, backend, engine = (_enum_value(cfg.device), _enum_value(cfg.engine.backend),
                               _enum_value(cfg.engine.name))
    _check(device in ("cuda", "auto"), "engine.cuda_graph", True,
           f"false with device={device} (CUDA graphs need device=cuda, or auto on a machine with CUDA)")
    _check(backend == "torch", "engine.cuda_graph", True,
           f"false with engine.backend={backend} (a CUDA graph captures torch tensors: engine.backend=torch)")
    _check(engine in ("manual", "both"), "engine.cuda_graph", True,
           f"false with engine={engine} (it captures the hand-written step: engine=manual or both)")


def _enum_value(x: Any) -> Any:
    return x.value if isinstance(x, Enum) else x
