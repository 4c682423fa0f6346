"""Replicas and the batching sweeper: every replica equals its configuration run alone.

- ``train_replicas`` (K points of one shape in one batched program) against ``run.train`` for each
  point alone, in-process: same config.yaml, same metrics rows (keys and steps exactly, float64
  values to 1e-10), same summary; a replica that diverges is recorded as its run alone is, and the
  others go on and still equal theirs.
- ``hydra/sweeper=batched`` against Hydra's basic sweeper on the same command line, in
  subprocesses: the same job folders with the same .hydra files and the same results.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import KillAt, Killed
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from hydra_plugins.testbed_batched_sweeper.batched_sweeper import Point, _consecutive, group_points
from testbed.app.replicas import (
    ReplicaPoint,
    point_config,
    replica_points,
    train_replicas,
    validate_replicas,
    wants_replicas,
)
from testbed.app.run import train
from testbed.app.schema import ConfigError, TrainConfig, register_configs
from testbed.tracking.files import read_metrics
from testbed.tracking.sweep import load_sweep
from testbed.tracking.wandb_logger import NullLogger

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-10  # float64: relative, on every metric
CMP_TOL = 1e-10  # cmp/*: rounding-level discrepancies in both runs, compared absolutely
BASE = ["logger=none", "engine=manual", "model.depth=2", "model.width=12", "train.steps=12",
        "train.log_every=4", "train.progress=false"]
POINTS = [ReplicaPoint(0, 0.1, "xavier_uniform", 1.0), ReplicaPoint(1, 0.05, "kaiming_normal", 1.5),
          ReplicaPoint(2, 0.2, "orthogonal", 0.7)]
HAS_REPLICA_SCHEMA = "replicas" in {f.name for f in fields(TrainConfig)}
needs_hooks = pytest.mark.skipif(not HAS_REPLICA_SCHEMA, reason="train.replicas is not in the schema yet "
                                 "(the schema/main hooks of testbed.app.replicas are not applied)")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: more threads only fight over the cores (OpenMP spin-waits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compose_configs(base: list[str], points: list[ReplicaPoint]):
    """The replica run's config, and each point's config as its own command line gives it."""
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
            cfg = compose("config", overrides=base)
            alone = [compose("config", overrides=[*base, f"seed={p.seed}", f"optim.lr={p.lr}",
                                                  f"model.init={p.init}", f"model.init_scale={p.init_scale}"])
                     for p in points]
    finally:
        GlobalHydra.instance().clear()
    return cfg, alone


def close(key: str, a, b) -> bool:
    if not isinstance(a, float) or not isinstance(b, float):
        return a == b
    if math.isnan(a) or math.isnan(b) or math.isinf(a) or math.isinf(b):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if key.startswith("cmp/grad_err_bound_ratio"):  # rounding noise in units of its bound: a batched
        return 0 <= a <= 1 and 0 <= b <= 1           # run rounds otherwise; both must be within it
    if key.startswith("cmp/"):
        return abs(a - b) <= CMP_TOL
    return abs(a - b) <= TOL * max(abs(a), abs(b)) + 1e-15


def assert_same_run(alone_dir: Path, batched_dir: Path, alone: dict | None = None,
                    batched: dict | None = None) -> None:
    """Same config.yaml, metrics rows (keys, steps; values to TOL) and summary (wall time aside)."""
    assert (batched_dir / "config.yaml").read_text() == (alone_dir / "config.yaml").read_text()
    a, b = read_metrics(alone_dir / "metrics.jsonl", True), read_metrics(batched_dir / "metrics.jsonl", True)
    assert [r["step"] for r in b] == [r["step"] for r in a]
    for row_a, row_b in zip(a, b, strict=True):
        assert list(row_b) == list(row_a)
        bad = {k: (row_a[k], row_b[k]) for k in row_a if not close(k, row_a[k], row_b[k])}
        assert not bad, f"step {row_a['step']}: {bad}"
    alone = alone if alone is not None else json.loads((alone_dir / "summary.json").read_text())
    batched = batched if batched is not None else json.loads((batched_dir / "summary.json").read_text())
    assert set(batched) == set(alone)
    bad = {k: (alone[k], batched[k]) for k in alone if k != "wall_s" and not close(k, alone[k], batched[k])}
    assert not bad, bad


def train_batched(tmp_path: Path, cfg, points: list[ReplicaPoint]) -> tuple[list[Path], list[dict]]:
    """The points trained together by ``train_replicas`` in tmp_path/batched<k>: (folders, summaries)."""
    dirs = [tmp_path / f"batched{k}" for k in range(len(points))]
    return dirs, train_replicas(cfg, points, dirs, [NullLogger() for _ in points])


def train_alone(tmp_path: Path, configs: list) -> list[tuple[Path, dict]]:
    """Each config run alone by ``run.train`` in tmp_path/alone<k>: (folder, summary)."""
    runs = []
    for k, config in enumerate(configs):
        run_dir = tmp_path / f"alone{k}"
        run_dir.mkdir()
        runs.append((run_dir, train(config, run_dir, NullLogger())))
    return runs


@pytest.mark.parametrize("extra", [
    [],  # the torch backend, SGD
    ["engine=both", "optim=momentum"],  # the torch reference batched with torch.func
    ["engine.backend=numpy", "optim=adam", "optim.lr=0.01", "optim.clip_norm=0.5", "model.activation=relu"],
    ["train.replica_block=2", "engine=both", "optim=adam", "optim.clip_norm=0.5"],  # blocks of 2 and 1
], ids=["manual-sgd", "both-momentum", "numpy-adam-clip", "blocks-both-adam"])
def test_each_replica_equals_its_run_alone(tmp_path, extra):
    points = POINTS
    if "optim=adam" in extra:
        points = [ReplicaPoint(p.seed, p.lr / 10, p.init, p.init_scale) for p in POINTS]
    cfg, alone = compose_configs(BASE + extra, points)
    batched_dirs, summaries = train_batched(tmp_path, cfg, points)
    for k, (alone_dir, summary) in enumerate(train_alone(tmp_path, alone)):
        assert summary["status"] == "completed"
        assert_same_run(alone_dir, batched_dirs[k], summary, summaries[k])


@pytest.mark.parametrize("block", [None, 2, 1], ids=["one-block", "blocks-of-2", "blocks-of-1"])
def test_a_diverged_replica_is_recorded_and_dropped_while_the_others_go_on(tmp_path, block):
    """Replica 1 diverges: one stack is cut; in blocks of 2 the first block is cut; in blocks of 1
    its block is dropped."""
    points = [ReplicaPoint(0, 0.01, "xavier_uniform", 1.0), ReplicaPoint(1, 50.0, "xavier_uniform", 1.0),
              ReplicaPoint(2, 0.02, "kaiming_normal", 1.0)]
    base = [*BASE, "engine.backend=numpy", "optim=adam", "train.max_loss=8",
            *([f"train.replica_block={block}"] if block else [])]
    cfg, alone = compose_configs(base, points)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batched_dirs, summaries = train_batched(tmp_path, cfg, points)
    assert [s["status"] for s in summaries] == ["completed", "diverged", "completed"]
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    for k, (alone_dir, summary) in enumerate(train_alone(tmp_path, alone)):
        assert_same_run(alone_dir, batched_dirs[k], summary, summaries[k])
    diverged = summaries[1]
    assert diverged["diverged_at_step"] < 12 and diverged["steps"] == diverged["diverged_at_step"]
    assert read_metrics(batched_dirs[1] / "metrics.jsonl")[-1]["status"] == "diverged"


def test_replica_keys_of_a_config():
    cfg = OmegaConf.create({"seed": 3, "optim": {"lr": 0.1}, "engine": {"name": "manual"},
                            "model": {"init": "xavier_uniform", "init_scale": 1.0},
                            "train": {"replicas": 3, "replica_seeds": [], "replica_lrs": [0.1, 0.2, 0.3],
                                      "replica_inits": [], "replica_init_scales": [], "replica_dirs": [],
                                      "checkpoint_every": 0}})
    assert wants_replicas(cfg)
    validate_replicas(cfg)
    assert replica_points(cfg) == [ReplicaPoint(3, 0.1, "xavier_uniform", 1.0),
                                   ReplicaPoint(4, 0.2, "xavier_uniform", 1.0),
                                   ReplicaPoint(5, 0.3, "xavier_uniform", 1.0)]
    alone = point_config(cfg, replica_points(cfg)[2])
    assert (alone.seed, alone.optim.lr, alone.train.replicas) == (5, 0.3, 1)
    assert list(alone.train.replica_lrs) == []
    assert not wants_replicas(alone)
    validate_replicas(OmegaConf.merge(cfg, OmegaConf.from_dotlist(["train.checkpoint_every=5"])))
    for key, value, message in (("train.replica_lrs", [0.1, 0.2], "one per replica"),
                                ("train.replica_lrs", [0.1, -1.0, 0.2], "finite numbers > 0"),
                                ("train.replica_block", 0, "null \\(automatic\\) or an integer >= 1"),
                                ("engine.name", "torch", "manual or both")):
        bad = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{key}={value}"]))
        with pytest.raises(ConfigError, match=message):
            validate_replicas(bad)


# -- the sweeper ------------------------------------------------------------------------------------

def _point(num: int, overrides: list[str], **changes) -> Point:
    resolved = {"seed": 0, "data": {"seed": 0}, "engine": {"name": "manual"},
                "optim": {"name": "sgd", "lr": 0.1},
                "model": {"depth": 2, "init": "xavier_uniform", "init_scale": 1.0},
                "train": {"replicas": 1, "replica_seeds": [], "replica_lrs": [], "replica_inits": [],
                          "replica_init_scales": [], "replica_dirs": [], "checkpoint_every": 0}}
    for dotted, value in changes.items():
        node = resolved
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return Point(num, overrides, OmegaConf.create({}), OmegaConf.create({}), OmegaConf.create({}), resolved)


def test_grouping_rule():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    points = [
        _point(0, ["model.depth=2", "seed=0"]),
        _point(1, ["model.depth=3", "seed=0"], model__depth=3),
        _point(2, ["model.depth=2", "seed=1"], seed=1),
        _point(3, ["model.depth=3", "seed=1"], model__depth=3),
        # a key that follows a batchable one (data.seed: ${seed}) differs: not batched with 0 and 2
        _point(4, ["model.depth=2", "seed=2"], seed=2, data__seed=2),
        _point(5, ["model.depth=2", "optim.lr=0.5"], optim__lr=0.5),
        _point(6, ["model.depth=2", "seed=3"], seed=3, engine__name="torch"),  # torch alone: not batched
        _point(7, ["model.depth=2", "model.init=orthogonal"], model__init="orthogonal"),
    ]
    groups, alone = group_points(points, parser)
    assert [[p.num for p in g] for g in groups] == [[0, 2, 5, 7], [1, 3]]
    assert [p.num for p in alone] == [4, 6]
    groups, alone = group_points(points, parser, max_replicas=3)
    assert [[p.num for p in g] for g in groups] == [[0, 2, 5], [1, 3]]
    assert [p.num for p in alone] == [4, 6, 7]
    assert [[p.num for p in run] for run in _consecutive(alone)] == [[4], [6, 7]]


def run_app(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1",
           "OMP_NUM_THREADS": "1", "TESTBED_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


SWEEP = ["engine=manual", "logger=none", "model.width=8", "train.steps=6", "train.log_every=2",
         "train.progress=false", "seed=0,1", "optim.lr=0.05,0.1", "model.depth=1,2"]


@needs_hooks
def test_the_batched_sweep_equals_the_basic_sweep(tmp_path):
    basic = run_app("-m", *SWEEP, f"hydra.sweep.dir={tmp_path / 'basic'}", cwd=tmp_path)
    assert basic.returncode == 0, basic.stderr[-3000:]
    batched = run_app("-m", "hydra/sweeper=batched", *SWEEP, f"hydra.sweep.dir={tmp_path / 'batched'}",
                      cwd=tmp_path)
    assert batched.returncode == 0, batched.stderr[-3000:]
    assert "8 points in 2 jobs of replicas (4, 4) and 0 jobs alone" in batched.stdout + batched.stderr

    basic_runs, batched_runs = load_sweep(tmp_path / "basic"), load_sweep(tmp_path / "batched")
    jobs = [str(j) for j in range(8)]
    assert [r.path.name for r in batched_runs] == [r.path.name for r in basic_runs] == jobs
    for a, b in zip(basic_runs, batched_runs, strict=True):
        assert b.overrides == a.overrides
        for name in ("overrides.yaml", "config.yaml"):
            assert (b.path / ".hydra" / name).read_text() == (a.path / ".hydra" / name).read_text()
        hydra_a = yaml.safe_load((a.path / ".hydra" / "hydra.yaml").read_text())["hydra"]
        hydra_b = yaml.safe_load((b.path / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert hydra_b["job"] == hydra_a["job"]
        assert hydra_b["runtime"]["output_dir"] == str(b.path.resolve())
        assert (b.path / "main.log").is_file()
        assert_same_run(a.path, b.path)
    # the groups' jobs are not job folders of the sweep
    groups = sorted((tmp_path / "batched" / ".batched").iterdir())
    assert [g.name for g in groups] == ["0", "1"]
    listed = json.loads((groups[0] / "summary.json").read_text())["replicas"]
    assert [Path(r["run_dir"]).name for r in listed] == ["0", "2", "4", "6"]


@needs_hooks
def test_a_single_run_of_replicas_reads_as_a_sweep(tmp_path):
    run_dir = tmp_path / "run"
    bad = run_app("engine=manual", "train.replicas=3", "train.replica_lrs=[0.1,0.2]", cwd=tmp_path)
    assert bad.returncode == 2 and "train.replica_lrs" in bad.stderr and "Traceback" not in bad.stderr
    proc = run_app("engine=manual", "logger=none", "model.width=8", "train.steps=4", "train.log_every=2",
                   "train.replicas=3", "train.replica_lrs=[0.05,0.1,0.2]", f"hydra.run.dir={run_dir}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = load_sweep(run_dir)
    assert [r.overrides for r in runs] == [{"engine": "manual", "logger": "none", "model.width": "8",
                                            "train.steps": "4", "train.log_every": "2",
                                            "seed": str(k), "optim.lr": str(lr)}
                                           for k, lr in enumerate((0.05, 0.1, 0.2))]
    assert [r.status for r in runs] == ["completed"] * 3
    assert [r.get("optim.lr") for r in runs] == [0.05, 0.1, 0.2]
    assert [r.get("seed") for r in runs] == [0, 1, 2]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_logged_test_loss_is_of_the_parameters_before_the_steps_update(tmp_path):
    """Row k's test/loss is the net after k updates: step 0's is the loss at initialisation, and the
    last row's (no update at the last step) is the final test loss, alone and as replicas."""
    from testbed.app.run import model_spec
    from testbed.data import load_dataset
    from testbed.engine import MLP, Backend, init_params

    cfg, alone = compose_configs(BASE, POINTS)
    batched_dirs, summaries = train_batched(tmp_path, cfg, POINTS)
    for k, (config, (alone_dir, summary)) in enumerate(zip(alone, train_alone(tmp_path, alone), strict=True)):
        data = load_dataset(str(config.data.name), seed=config.data.seed)
        spec = model_spec(config, data)
        backend = Backend("numpy", "float64")
        net = MLP(spec, {n: backend.asarray(v) for n, v in init_params(spec, config.seed).items()})
        at_init = float(net.loss(backend.asarray(data.x_test), backend.labels(data.y_test)))
        for run_dir, run_summary in ((alone_dir, summary), (batched_dirs[k], summaries[k])):
            rows = read_metrics(run_dir / "metrics.jsonl", True)
            assert rows[0]["step"] == 0 and rows[-1]["step"] == config.train.steps
            assert abs(rows[0]["test/loss"] - at_init) <= 1e-12 * at_init
            assert abs(rows[-1]["test/loss"] - run_summary["final/test_loss"]) <= 1e-12 * at_init
            assert rows[1]["test/loss"] != rows[0]["test/loss"]  # updates did happen in between


# -- checkpoints of a replica program ---------------------------------------------------------------

def _params_bitwise(a: Path, b: Path) -> bool:
    with np.load(a) as pa, np.load(b) as pb:
        return set(pa) == set(pb) and all(pa[k].tobytes() == pb[k].tobytes() for k in pa)


@pytest.mark.parametrize("extra", [
    ["engine=both", "optim=momentum"],
    ["engine.backend=numpy", "optim=adam", "train.max_loss=8"],
    ["optim=adam", "train.max_loss=8", "train.replica_block=2"],
], ids=["both-momentum", "numpy-adam-diverging", "blocks-adam-diverging"])
def test_a_replica_program_killed_and_resumed_equals_one_never_stopped(tmp_path, extra):
    """Killed after its second checkpoint (one replica already diverged in the Adam case, so the stack
    is cut), resumed from the job's checkpoint: every replica's files equal the uninterrupted run's."""
    from testbed.app.checkpoint import load_checkpoint

    points = POINTS
    if "optim=adam" in extra:  # replica 1 diverges early: the resumed stack holds the other two
        points = [ReplicaPoint(0, 0.01, "xavier_uniform", 1.0), ReplicaPoint(1, 50.0, "xavier_uniform", 1.0),
                  ReplicaPoint(2, 0.02, "kaiming_normal", 1.0)]
    base = [*BASE, "train.steps=20", "train.checkpoint_every=5", "train.save_params=true", *extra]
    cfg, _ = compose_configs(base, points)
    reference_dirs = [tmp_path / f"reference{k}" for k in range(3)]
    killed_dirs = [tmp_path / f"killed{k}" for k in range(3)]
    group = tmp_path / "group"
    group.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the diverging replica's overflow
        expected = train_replicas(cfg, points, reference_dirs, [NullLogger() for _ in points])
        with pytest.raises(Killed):
            train_replicas(cfg, points, killed_dirs, [KillAt(12) for _ in points], checkpoint_dir=group)
        checkpoint = load_checkpoint(group)
        assert checkpoint["loop"]["step"] == 10  # killed at step 12: the rows after the checkpoint are redone
        if "optim=adam" in extra:
            assert checkpoint["loop"]["active"] == [0, 2]
        loggers = [KeepRows() for _ in points]
        summaries = train_replicas(cfg, points, killed_dirs, loggers, checkpoint_dir=group, resume=checkpoint)
    for k in range(3):
        metrics = "metrics.jsonl"
        assert (killed_dirs[k] / metrics).read_bytes() == (reference_dirs[k] / metrics).read_bytes()
        assert _params_bitwise(killed_dirs[k] / "params_final.npz", reference_dirs[k] / "params_final.npz")
        assert summaries[k].pop("resumed_from") == [10]
        assert ({key: v for key, v in summaries[k].items() if key != "wall_s"}
                == {key: v for key, v in expected[k].items() if key != "wall_s"})
        # the resumed logger got every row, those written before the kill included
        assert [step for step, _ in loggers[k].rows] == [r["step"] for r in read_metrics(
            killed_dirs[k] / "metrics.jsonl")]
    if "optim=adam" in extra:
        assert [s["status"] for s in summaries] == ["completed", "diverged", "completed"]


class KeepRows(NullLogger):
    def __init__(self):
        self.rows = []

    def log(self, metrics, step):
        self.rows.append((step, metrics))


def test_a_killed_replica_job_resumes_from_its_checkpoint(tmp_path):
    """A real `python -m testbed train.replicas=3` SIGKILLed mid-run and started again with
    train.resume=true in its folder ends with the files of a run never stopped."""
    import signal
    import time

    args = [*BASE, "train.steps=400", "train.log_every=20", "train.checkpoint_every=40",
            "train.replicas=3", "train.replica_lrs=[0.1,0.05,0.2]"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    done = run_app(*args, f"hydra.run.dir={reference}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1",
           "TESTBED_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "testbed", *args, f"hydra.run.dir={killed}"], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed / "0" / "summary.json").exists()
    resumed = run_app(*args, "train.resume=true", f"hydra.run.dir={killed}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from the checkpoint at step" in resumed.stdout + resumed.stderr
    for k in range(3):
        metrics = Path(str(k), "metrics.jsonl")
        assert (killed / metrics).read_bytes() == (reference / metrics).read_bytes()
        assert json.loads((killed / str(k) / "summary.json").read_text())["status"] == "completed"
    assert not (killed / "checkpoint.pt").exists()  # finished: the checkpoint is gone
