"""W&B logging offline: one run per logger, read back exactly, and never a crash.

No network: every run is offline (or disabled) into tmp_path, read back with
testbed.tracking.wandb_offline and, where the CLI exists, checked against
`wandb leet inspect --json`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

wandb = pytest.importorskip("wandb")

from testbed.tracking.wandb_logger import (  # noqa: E402
    NullLogger,
    TrackingWarning,
    WandbLogger,
    open_logger,
)
from testbed.tracking.wandb_offline import (  # noqa: E402
    find_offline_runs,
    has_exit_record,
    iter_records,
    read_config,
    read_history,
)

WANDB_CLI = Path(sys.executable).with_name("wandb")


def _offline_env(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    for name in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(root))
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(root / "wandb-home" / name.lower()))
    # Nothing may reach a server, even if a test asked for online mode by mistake.
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")


def _logger(run_dir: Path, config: dict, mode: str = "offline", **overrides) -> WandbLogger:
    kwargs = dict(
        run_dir=run_dir,
        config=config,
        project="testbed-tests",
        group="unit",
        job_type="train",
        name=None,
        tags=["test"],
        mode=mode,
        init_timeout=30.0,
    )
    kwargs.update(overrides)
    return open_logger("wandb", **kwargs)


def _has_exit_record(run: Path) -> bool:
    return any(record.WhichOneof("record_type") == "exit" for record in iter_records(run))


def _wait_for_exit_record(run: Path, timeout: float = 10.0) -> bool:
    """For a run that W&B finished by itself: `run.finish()` returns before the file is flushed."""
    deadline = time.monotonic() + timeout
    while not has_exit_record(run):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _tracking_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TrackingWarning)]


# -- three runs in one process, shared by the read-back tests ---------------------------------

CONFIG_A = {"job": 1, "model": {"depth": 3, "activation": "tanh"}, "optim": {"lr": 0.1}}
CONFIG_B = {"job": 2, "model": {"depth": 5, "activation": "relu"}, "optim": {"lr": 0.01}}
CONFIG_C = {"job": 3, "model": {"depth": 2, "activation": "gelu"}, "optim": {"lr": 1.0}}
ROWS_A = [
    (step, {"loss": 2.0 / (step + 1), "grad_norm/W/L1": 0.5 * step, "grad_norm/W/L2": 1e-8 * step})
    for step in (0, 10, 20, 30)
]
ROWS_B = [(step, {"loss": 3.0 - step, "act/std/L2": 0.25, "grad_norm/s/L3": 7.0}) for step in (0, 5)]
ROWS_C = [(step, {"loss": float(step), "wide": 1.0}) for step in (1, 2)]
# One row wider than a 32 KiB block: its record is split into first/middle/last chunks.
WIDE_ROW = {f"grad_norm/W/L{layer}": layer + 0.125 for layer in range(1, 2501)}
NON_FINITE = {"loss": math.nan, "grad_norm/W/L1": math.inf, "grad_norm/W/L2": -math.inf}
HEATMAP = np.exp(np.linspace(-12.0, 3.0, 4 * 5)).reshape(4, 5)  # spans > 6 decades
HEATMAP_STEPS = [0, 10, 20, 30, 40]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("wandb-runs")
    with pytest.MonkeyPatch.context() as monkeypatch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _offline_env(monkeypatch, root)

        logger_a = _logger(root / "job_a", CONFIG_A)
        for step, metrics in ROWS_A:
            logger_a.log(metrics, step)
        logger_a.log(NON_FINITE, step=40)
        logger_a.finish(summary={"final_loss": 0.125, "diverged": math.nan}, exit_code=0)
        logger_a.finish()  # twice is fine

        # Job B never calls finish(): job C in the same process must still get its own run.
        logger_b = _logger(root / "job_b", CONFIG_B)
        for step, metrics in ROWS_B:
            logger_b.log(metrics, step)
        logger_b.log_heatmap("heatmap/grad_norm_W", HEATMAP, HEATMAP_STEPS, "|dL/dW| per layer")
        logger_b.log_line_series(
            "lines/grad_norm_W",
            HEATMAP_STEPS,
            {f"L{layer + 1}": list(HEATMAP[layer]) for layer in range(4)},
            "|dL/dW| per layer",
        )

        logger_c = _logger(root / "job_c", CONFIG_C)
        for step, metrics in ROWS_C:
            logger_c.log(metrics, step)
        logger_c.log(WIDE_ROW, step=3)
        logger_c.finish()

    return {
        "root": root,
        "where": [Path(logger.where) for logger in (logger_a, logger_b, logger_c)],
        "warnings": _tracking_warnings(caught),
    }


def test_each_logger_gets_its_own_offline_run(runs):
    run_a, run_b, run_c = runs["where"]
    assert len({run_a, run_b, run_c}) == 3
    assert run_a.parent == runs["root"] / "job_a" / "wandb" and run_a.name.startswith("offline-run-")
    assert find_offline_runs(runs["root"]) == sorted(runs["where"])
    assert runs["warnings"] == []


def test_config_read_back_per_run(runs):
    assert [read_config(run) for run in runs["where"]] == [CONFIG_A, CONFIG_B, CONFIG_C]


def test_history_read_back_exactly_in_order(runs):
    run_a, _, run_c = runs["where"]
    history_a = read_history(run_a)
    assert history_a[:-1] == [{**metrics, "step": step} for step, metrics in ROWS_A]
    assert history_a[-1]["step"] == 40
    assert math.isnan(history_a[-1]["loss"])
    assert history_a[-1]["grad_norm/W/L1"] == math.inf
    assert history_a[-1]["grad_norm/W/L2"] == -math.inf
    # A row split over several blocks comes back whole.
    assert len(json.dumps(WIDE_ROW)) > 2 * 32 * 1024
    assert read_history(run_c) == [{**metrics, "step": step} for step, metrics in ROWS_C] + [
        {**WIDE_ROW, "step": 3}
    ]
    internal = read_history(run_a, internal=True)
    assert [row["_step"] for row in internal] == list(range(len(ROWS_A) + 1))


def test_unfinished_run_is_closed_by_the_next_logger(runs):
    run_a, run_b, run_c = runs["where"]
    assert _wait_for_exit_record(run_b)
    # The tail-only check agrees with a full scan (run C's file spans three blocks).
    assert all(_has_exit_record(run) and has_exit_record(run) for run in (run_a, run_b, run_c))
    history_b = read_history(run_b)
    assert history_b[: len(ROWS_B)] == [{**metrics, "step": step} for step, metrics in ROWS_B]
    assert not any("wide" in row for row in history_b)  # nothing of job C leaked into B


def test_heatmap_and_line_series_are_logged(runs):
    run_b = runs["where"][1]
    media = list((run_b / "files" / "media" / "images").rglob("*.png"))
    assert len(media) == 1
    rows = read_history(run_b)
    image = next(row["heatmap/grad_norm_W"] for row in rows if "heatmap/grad_norm_W" in row)
    assert image["_type"] == "image-file"
    assert (run_b / "files" / image["path"]).is_file()
    assert any(row.get("lines/grad_norm_W_table", {}).get("_type") == "table-file" for row in rows)


@pytest.mark.skipif(not WANDB_CLI.exists(), reason="wandb CLI not installed next to python")
def test_reader_matches_wandb_leet_inspect(runs):
    def leet_value(value):
        if isinstance(value, float) and not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return value

    def flatten(row: dict, prefix: str = "") -> dict:
        flat = {}
        for key, value in row.items():
            if isinstance(value, dict):
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[prefix + key] = leet_value(value)
        return flat

    for run in runs["where"]:
        result = subprocess.run(
            [str(WANDB_CLI), "leet", "inspect", "--json", str(run)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        from_cli = [record["history"]["item"] for record in records if record["type"] == "history"]
        assert from_cli, f"no history records from the CLI for {run}"
        assert [flatten(row) for row in read_history(run, internal=True)] == from_cli


# -- modes and failures -----------------------------------------------------------------------


def test_disabled_mode_writes_no_run(tmp_path, monkeypatch):
    _offline_env(monkeypatch, tmp_path)
    logger = _logger(tmp_path / "job", {"job": 0}, mode="disabled")
    assert isinstance(logger, WandbLogger) and logger.where == "disabled"
    logger.log({"loss": 1.0}, step=0)
    logger.log_heatmap("heatmap/x", HEATMAP, HEATMAP_STEPS, "x")
    logger.finish(summary={"loss": 1.0})
    assert find_offline_runs(tmp_path) == []


def test_bad_mode_and_kind_raise(tmp_path):
    with pytest.raises(ValueError, match="offline, online, disabled"):
        _logger(tmp_path, {}, mode="ofline")
    with pytest.raises(ValueError, match="wandb"):
        open_logger("tensorboard")


def test_null_logger_accepts_everything():
    logger = open_logger("none")
    assert isinstance(logger, NullLogger) and logger.where is None
    logger.log({"loss": math.nan}, step=0)
    logger.log_heatmap("h", HEATMAP, HEATMAP_STEPS, "t")
    logger.log_line_series("l", [0], {"L1": [1.0]}, "t")
    logger.finish(summary={"a": 1.0}, exit_code=1)
    logger.finish()


def test_init_failure_falls_back_to_offline_once(tmp_path, monkeypatch):
    _offline_env(monkeypatch, tmp_path)
    real_init = wandb.init
    calls = []

    def flaky_init(*args, **kwargs):
        calls.append(kwargs["mode"])
        if len(calls) == 1:
            raise wandb.errors.CommError("Timed out while retrying: no network")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", flaky_init)
    with pytest.warns(TrackingWarning) as caught:
        logger = _logger(tmp_path / "job", {"job": 7}, mode="online")
    assert calls == ["online", "offline"]
    assert len(caught) == 1 and "falling back to offline" in str(caught[0].message)
    assert "Timed out" in str(caught[0].message)
    logger.log({"loss": 0.5}, step=1)
    logger.finish()
    assert read_history(logger.where) == [{"loss": 0.5, "step": 1}]
    assert read_config(logger.where) == {"job": 7}


def test_init_failing_twice_gives_null_logger(tmp_path, monkeypatch):
    _offline_env(monkeypatch, tmp_path)

    def broken_init(*args, **kwargs):
        raise RuntimeError("wandb-core did not start")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(TrackingWarning) as caught:
        logger = _logger(tmp_path / "job", {"job": 8}, mode="online")
    assert isinstance(logger, NullLogger)
    assert len(caught) == 2 and "no W&B logging" in str(caught[1].message)
    logger.log({"loss": 0.5}, step=1)
    logger.finish()


def test_exception_inside_log_warns_once_then_noop(tmp_path, monkeypatch):
    _offline_env(monkeypatch, tmp_path)
    logger = _logger(tmp_path / "job", {"job": 9})
    logger.log({"loss": 1.0}, step=0)

    calls = []

    def broken_log(*args, **kwargs):
        calls.append(args)
        raise OSError("disk full")

    monkeypatch.setattr(logger.run, "log", broken_log)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger.log({"loss": 2.0}, step=1)
        logger.log({"loss": 3.0}, step=2)
        logger.log_heatmap("heatmap/x", HEATMAP, HEATMAP_STEPS, "x")
        logger.log_line_series("lines/x", [0], {"L1": [1.0]}, "x")
        logger.finish(summary={"loss": 3.0}, exit_code=0)
        logger.finish()
    messages = _tracking_warnings(caught)
    assert len(messages) == 1 and "disk full" in messages[0]
    assert len(calls) == 1
    monkeypatch.undo()
    # The run is still closed, with what was logged before the failure.
    assert read_history(logger.where) == [{"loss": 1.0, "step": 0}]
    assert _has_exit_record(Path(logger.where))


@pytest.mark.slow
def test_online_without_server_times_out_then_offline(tmp_path, monkeypatch):
    """A real timeout: online mode against a closed local port, init_timeout=3 s."""
    _offline_env(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a key, so that init tries the (closed) server
    with pytest.warns(TrackingWarning, match="falling back to offline"):
        logger = _logger(tmp_path / "job", {"job": 10}, mode="online", init_timeout=3.0)
    assert isinstance(logger, WandbLogger)
    logger.log({"loss": 1.0}, step=0)
    logger.finish()
    assert read_history(logger.where) == [{"loss": 1.0, "step": 0}]
