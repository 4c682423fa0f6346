"""The Hydra app end to end: outputs contract, bad input, divergence, sweeps, W&B runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import compose_config

from testbed.app.preflight import preflight
from testbed.app.run import build_trainers
from testbed.app.schema import ConfigError
from testbed.engine import MLPSpec
from testbed.tracking.files import read_metrics

REPO = Path(__file__).resolve().parents[1]
FAST = ["train.steps=6", "train.log_every=3", "model.width=16", "train.progress=false"]


def run_app(*args: str, cwd: Path, wandb_mode: str = "offline", timeout: int = 300):
    env = {**os.environ, "WANDB_MODE": wandb_mode, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0",
           "TESTBED_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_single_run_writes_the_three_files(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_app(*FAST, "logger=none", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {"config.yaml", "metrics.jsonl", "summary.json"} <= {p.name for p in run_dir.iterdir()}
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 3, 6]
    depth = 2
    for row in rows:
        for layer in range(1, depth + 2):
            for key in ("grad_norm/W", "grad_norm/s", "act/std", "act/saturation", "act/mean", "preact/std"):
                assert f"{key}/L{layer}" in row
        for key in ("train/loss", "test/loss", "test/acc", "cmp/loss_abs_diff", "cmp/grad_max_rel_err",
                    "cmp/param_max_rel_err", "cmp/grad_err_bound_ratio"):
            assert key in row
        # float64 side by side: the hand-written engine equals torch to rounding, within its bound
        assert row["cmp/grad_max_rel_err"] < 1e-10 and row["cmp/param_max_rel_err"] < 1e-10
        assert 0 <= row["cmp/grad_err_bound_ratio"] <= 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cmp/grad_err_bound_ratio_max"] == max(r["cmp/grad_err_bound_ratio"] for r in rows)
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert 0 <= summary["final/test_acc"] <= 1 and summary["wall_s"] > 0
    assert "depth: 2" in (run_dir / "config.yaml").read_text()


@pytest.mark.parametrize("override, names", [
    ("model.activaton=relu", "model.activaton"),
    ("model.activation=sigmod", "model.activation"),
    ("model.depth=abc", "model.depth"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.lr=nan", "optim.lr"),
    ("model.depth=-1", "model.depth"),
    ("model.width=0", "model.width"),
    ("+model.typo=1", "model.typo"),
    ("+optim.typo=1", "optim.typo"),
    ("data=foo", "data"),
    ("model.init=he_uniformm", "model.init"),
    ("data.batch_size=0", "data.batch_size"),
    ("optim.momentum=1.5", "optim.momentum"),
    ("data=idx", "data.path"),
    ("data=idx data.path=/no/such/folder", "data.path"),
    ("+experiment=no_such_preset", "experiment"),
])
def test_bad_config_is_one_line_naming_the_key(override, names):
    with pytest.raises(ConfigError) as error:
        preflight(override.split())
    message = str(error.value)
    assert "\n" not in message and names in message


def test_bad_sweep_value_is_caught_before_any_job():
    with pytest.raises(ConfigError, match="model.activation='sigmod'"):
        preflight(["model.activation=tanh,sigmod", "model.depth=1,2"])


def test_valid_configs_pass_preflight():
    assert preflight(["model.depth=0", "optim=adam", "data=xor"]) == 1
    assert preflight(["model.depth=1,2,3", "seed=0,1"]) == 1 + 3 + 2


def test_bad_config_from_the_command_line_exits_2_and_writes_nothing(tmp_path):
    proc = run_app("model.activation=sigmod", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.activation" in lines[0] and "tanh" in lines[0]
    assert not (tmp_path / "run").exists()


def test_huge_learning_rate_is_recorded_as_diverged(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_app(*FAST, "train.steps=50", "logger=none", "optim.lr=1e6", "model.activation=relu",
                   "model.init=kaiming_normal", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert 0 < summary["diverged_at_step"] <= 50
    assert isinstance(summary["last_finite_loss"], float)
    last = read_metrics(run_dir / "metrics.jsonl")[-1]
    assert last["status"] == "diverged" and last["step"] == summary["diverged_at_step"]


def test_same_seed_same_metrics_across_processes(tmp_path):
    outputs = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        proc = run_app(*FAST, "logger=none", "engine=manual", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        outputs.append((run_dir / "metrics.jsonl").read_bytes())
    assert outputs[0] == outputs[1]


def test_joblib_multirun_gives_one_wandb_run_per_job(tmp_path):
    """4 jobs on 2 reused joblib workers: 4 W&B runs, each with its own config, whose
    history (read back from the offline files) equals the job's metrics.jsonl."""
    from testbed.tracking.wandb_offline import find_offline_runs, read_config, read_history

    sweep_dir = tmp_path / "sweep"
    proc = run_app("-m", *FAST, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   "model.depth=1,2", "seed=0,1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 4
    run_ids = set()
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed"
        runs = find_offline_runs(job)
        assert len(runs) == 1, f"{job}: {runs}"
        run_ids.add(runs[0].name)
        config = read_config(runs[0])
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        assert f"model.depth={config['model']['depth']}" in overrides
        assert f"seed={config['seed']}" in overrides
        # the end-of-run charts (heatmap, line series) are history rows of their own
        history = [h for h in read_history(runs[0]) if "train/loss" in h]
        metrics = read_metrics(job / "metrics.jsonl")
        assert [h["step"] for h in history] == [m["step"] for m in metrics]
        for h, m in zip(history, metrics, strict=True):
            assert "cmp/grad_err_bound_ratio" in m  # engine=both's headline discrepancy reaches W&B too
            for key, value in m.items():
                assert h[key] == pytest.approx(value, rel=1e-12), key
    assert len(run_ids) == 4


def test_submitit_local_launcher_runs_a_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_app("-m", *FAST, "logger=none", "hydra/launcher=submitit_local", "seed=0,1",
                   f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summaries = sorted(sweep_dir.glob("*/summary.json"))
    assert len(summaries) == 2
    assert all(json.loads(p.read_text())["status"] == "completed" for p in summaries)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_trainer_fuses_plain_sgd_only_where_no_one_reads_the_gradients(backend):
    """engine=manual, plain SGD: a step that neither records nor clips runs ``MLP.sgd_step`` (no
    gradients kept) and matches the unfused trainer to rounding over 30 steps; a recorded step keeps
    its gradients. Momentum, clipping and engine=both (which compares every step's gradients with
    torch's) never fuse."""
    spec = MLPSpec(in_features=6, out_features=3, depth=2, width=9, activation="tanh")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)), rng.integers(0, 3, 64)

    def trainers(*overrides):
        cfg = compose_config("logger=none", f"engine.backend={backend}", "optim.lr=0.2", *overrides)
        made = build_trainers(cfg, spec, "cpu")
        for t in made:
            t.load_data(x, y, x, y)
        return made

    def fused_steps(trainer, steps=6):
        fused = []
        for step in range(steps):
            trainer.step(rng.integers(0, 64, 16), record=step % 3 == 0)
            fused.append(not trainer.grads)
        return fused

    assert fused_steps(trainers("engine=manual")[0]) == [False, True, True] * 2
    for overrides in (["engine=manual", "optim=momentum"], ["engine=manual", "optim.clip_norm=1.0"],
                      ["engine=both"]):
        assert not any(fused_steps(trainers(*overrides)[0])), overrides

    (fused,), (plain, _) = trainers("engine=manual"), trainers("engine=both")
    for _ in range(30):
        idx = rng.integers(0, 64, 16)
        assert abs(fused.step(idx) - plain.step(idx)) <= 1e-12
    for key, value in plain.params_numpy().items():
        ours = fused.params_numpy()[key]
        assert np.linalg.norm(ours - value) <= 1e-12 * np.linalg.norm(value), key
        assert backend == "torch" or np.array_equal(ours, value), key  # numpy forms the product either way
