"""Generated configs: valid ones train without error, invalid ones get a clean one-line error.

- valid: depth, width, activation, init, optimiser, learning rate, batch size, dtype, engine,
  array backend, clipping, data (small synthetic sets) drawn by hypothesis, composed in-process
  and trained for a few steps: the run is ``completed`` with every metric finite, or ``diverged``
  with its step and last finite loss recorded, never NaN without a status;
- invalid: junk strings, wrong types, unknown keys, impossible values, through ``preflight``:
  always ``ConfigError`` with a one-line message, never another exception.

``FUZZ_COUNTS`` counts the cases run (printed at the end with ``-s``).
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.app.preflight import CONFIG_DIR, preflight
from testbed.app.run import train
from testbed.app.schema import Activation, ConfigError, Init, register_configs
from testbed.tracking.files import read_metrics
from testbed.tracking.wandb_logger import NullLogger

FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
FUZZ_COUNTS: Counter = Counter()

DATA = {  # small sets: a few steps take milliseconds
    "xor": [],
    "blobs": ["+data.options={n_train:64,n_test:32}"],
    "spirals": ["+data.options={n_train:64,n_test:32}"],
    "sine": ["+data.options={n_train:32,n_test:16}"],
    "teacher": ["+data.options={n_train:64,n_test:32,in_features:3}"],
}
OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"]


@st.composite
def valid_overrides(draw) -> list[str]:
    data = draw(st.sampled_from(sorted(DATA)))
    engine = draw(st.sampled_from(["manual", "torch", "both"]))
    overrides = [
        f"data={data}", *DATA[data],
        f"data.batch_size={draw(st.integers(1, 64))}",
        f"model.depth={draw(st.integers(0, 4))}",
        f"model.width={draw(st.integers(1, 12))}",
        f"model.activation={draw(st.sampled_from([a.value for a in Activation]))}",
        f"model.init={draw(st.sampled_from([i.value for i in Init]))}",
        f"model.init_scale={draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 8.0]))}",
        f"model.dtype={draw(st.sampled_from(['float32', 'float64']))}",
        f"optim={draw(st.sampled_from(OPTIMIZERS))}",
        f"optim.lr={draw(st.floats(1e-4, 1e3).map(lambda x: float(f'{x:.3g}')))}",
        f"engine={engine}",
        f"engine.backend={draw(st.sampled_from(['torch', 'numpy']))}",
        f"train.steps={draw(st.integers(0, 8))}",
        f"train.log_every={draw(st.integers(1, 4))}",
        f"train.checkpoint_every={draw(st.integers(0, 3))}",
        f"seed={draw(st.integers(0, 2**31))}",
    ]
    if draw(st.booleans()):
        overrides.append(f"optim.clip_norm={draw(st.sampled_from([0.1, 1.0, 10.0]))}")
    if draw(st.booleans()):
        overrides.append(f"train.max_loss={draw(st.sampled_from([0.5, 10.0, 1e6]))}")
    return overrides


def compose_config(overrides: list[str]):
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            return compose("config", overrides=["logger=none", "train.progress=false", *overrides])
    finally:
        GlobalHydra.instance().clear()


def _finite_numbers(row: dict) -> bool:
    return all(math.isfinite(v) for v in row.values() if isinstance(v, float))


@settings(FUZZ, max_examples=30)
@given(overrides=valid_overrides())
def test_valid_configs_train_or_diverge_on_record(overrides, tmp_path_factory):
    assert preflight(overrides) == 1, overrides
    cfg = compose_config(overrides)
    run_dir = tmp_path_factory.mktemp("run")
    summary = train(cfg, run_dir, NullLogger())
    rows = read_metrics(run_dir / "metrics.jsonl", numbers=True)
    FUZZ_COUNTS[f"valid/{summary['status']}"] += 1
    assert summary["status"] in ("completed", "diverged"), (overrides, summary)
    if summary["status"] == "completed":
        assert summary["steps"] == cfg.train.steps
        assert all(_finite_numbers(row) for row in rows), (overrides, rows)
        finals = {k: v for k, v in summary.items() if k.startswith("final/")}
        assert all(math.isfinite(v) for v in finals.values()), (overrides, summary)
    else:
        assert 0 <= summary["diverged_at_step"] <= cfg.train.steps
        assert summary["last_finite_loss"] is None or math.isfinite(summary["last_finite_loss"])
        assert rows[-1]["status"] == "diverged" and rows[-1]["step"] == summary["diverged_at_step"]


KEYS = ["seed", "device", "model.depth", "model.width", "model.activation", "model.init", "model.init_scale",
        "model.dtype", "data", "data.batch_size", "optim", "optim.lr", "optim.momentum", "optim.betas",
        "optim.clip_norm", "train.steps", "train.log_every", "train.checkpoint_every", "train.resume",
        "train.max_loss", "engine", "engine.backend", "logger"]
BAD_VALUES = ["-1", "-0.5", "0", "nan", "inf", "-inf", "abc", "1.5e999", "[1,2", "{a:1}", "[]", "null", "''",
              "true", "sigmod", "1e-400", "2**8", "${oops}", "ümlaut", "3 4"]
NEVER_VALID = {
    "seed": ["-1", "nan", "abc", "{a:1}", "[]", "null"], "optim.lr": ["-1", "0", "nan", "inf", "abc"],
    "model.width": ["-1", "0", "nan", "abc", "null"], "model.depth": ["-1", "-0.5", "abc"],
    "train.log_every": ["0", "-1", "abc"], "model.activation": ["sigmod", "abc", "0"],
    "engine": ["abc", "sigmod"], "data": ["abc", "sigmod"],
}


def _check_clean(overrides: list[str]) -> ConfigError | None:
    """preflight either accepts or raises ConfigError with one line; anything else fails the test."""
    try:
        preflight(overrides)
    except ConfigError as error:
        message = str(error)
        assert message and "\n" not in message and "Traceback" not in message, message
        return error
    return None


@settings(FUZZ, max_examples=80)
@given(key=st.sampled_from(KEYS), value=st.sampled_from(BAD_VALUES) | st.text(max_size=12))
def test_bad_values_get_a_clean_error(key, value):
    error = _check_clean([f"{key}={value}"])
    FUZZ_COUNTS["invalid/value" + ("/accepted" if error is None else "")] += 1
    if value in NEVER_VALID.get(key, []):
        assert error is not None, f"{key}={value} was accepted"


@settings(FUZZ, max_examples=100)
@given(junk=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=3))
def test_junk_overrides_get_a_clean_error(junk):
    error = _check_clean(junk)
    FUZZ_COUNTS["invalid/junk" + ("/accepted" if error is None else "")] += 1


@settings(FUZZ, max_examples=40)
@given(section=st.sampled_from(["", "model.", "data.", "optim.", "train.", "engine.", "logger."]),
       name=st.from_regex(r"[a-z_]{1,10}", fullmatch=True), plus=st.booleans())
def test_unknown_keys_get_a_clean_error(section, name, plus):
    from testbed.app.preflight import schema_keys

    known = schema_keys(section.rstrip("."))
    override = f"{'+' if plus else ''}{section}{name}=1"
    error = _check_clean([override])
    FUZZ_COUNTS["invalid/key" + ("/accepted" if error is None else "")] += 1
    if name not in known and not (section == "" and name in ("analysis",)):
        assert error is not None and name in str(error), override


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print("\nfuzz cases:", dict(sorted(FUZZ_COUNTS.items())))
