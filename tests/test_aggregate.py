"""scripts/aggregate.py: a sweep folder -> one CSV row per job and plots; on a fake sweep with
the exact file layout, and end to end on a real two-job multirun."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest

from testbed.tracking.aggregate import aggregate, parse_override_value, table
from testbed.tracking.files import to_json
from testbed.tracking.sweep import load_sweep

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "aggregate.py"
DEPTHS, LRS, SEEDS = (1, 3), ("1e-3", "0.1"), (0, 1)
DIVERGED = {"model.depth": "3", "optim.lr": "0.1", "seed": "1"}
INCOMPLETE = {"model.depth": "1", "optim.lr": "1e-3", "seed": "1"}


def write_job(job_dir: Path, overrides: dict[str, str], status: str | None) -> None:
    """One job as Hydra and testbed.app.run leave it; status None: killed before summary.json."""
    (job_dir / ".hydra").mkdir(parents=True)
    items = ["train.steps=4", "model.activation=tanh", *(f"{k}={v}" for k, v in overrides.items())]
    (job_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in items))
    depth, lr, seed = int(overrides["model.depth"]), float(overrides["optim.lr"]), int(overrides["seed"])
    (job_dir / "config.yaml").write_text(f"seed: {seed}\nmodel:\n  depth: {depth}\n  activation: tanh\n"
                                         f"optim:\n  lr: {lr}\ntrain:\n  steps: 4\n")
    rows = []
    for step in (0, 2, 4):
        row = {"step": step, "epoch": 0, "train/loss": 2.3 - 0.1 * step, "test/loss": 2.3 - 0.05 * step,
               "test/acc": 0.1 + 0.05 * step * lr * 10}
        for layer in range(1, depth + 2):
            row[f"grad_norm/s/L{layer}"] = 0.1 * 0.5 ** (depth + 1 - layer) * (1 + 0.1 * seed)
            row[f"grad_norm/W/L{layer}"] = 0.3 * layer
        rows.append(row)
    if status == "diverged":
        rows = rows[:2] + [{"step": 3, "train/loss": float("inf"), "status": "diverged"}]
    lines = [to_json(row) + "\n" for row in rows]
    if status is None:
        lines = lines[:2] + ['{"step": 4, "train/lo']  # cut short by the kill
    (job_dir / "metrics.jsonl").write_text("".join(lines))
    if status == "completed":
        summary = {"status": "completed", "steps": 4, "wall_s": 1.5, "final/train_loss": 1.9 - lr,
                   "final/test_loss": 2.0 - lr, "final/test_acc": 0.3 + lr + 0.01 * seed - 0.02 * depth,
                   "final/train_acc": 0.35 + lr}
    elif status == "diverged":
        summary = {"status": "diverged", "steps": 3, "wall_s": 0.9, "diverged_at_step": 3,
                   "last_finite_loss": 2.1, "diverged_loss": float("inf")}
    if status is not None:
        (job_dir / "summary.json").write_text(to_json(summary, indent=2, sort_keys=True))


@pytest.fixture
def fake_sweep(tmp_path) -> Path:
    sweep_dir = tmp_path / "sweep"
    for job, (depth, lr, seed) in enumerate(product(DEPTHS, LRS, SEEDS)):
        overrides = {"model.depth": str(depth), "optim.lr": lr, "seed": str(seed)}
        status = "diverged" if overrides == DIVERGED else None if overrides == INCOMPLETE else "completed"
        write_job(sweep_dir / str(job), overrides, status)
    (sweep_dir / "multirun.yaml").write_text("hydra: {}\n")
    return sweep_dir


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_fake_sweep_gives_one_row_per_job_and_the_plots(fake_sweep):
    report = aggregate(fake_sweep)
    columns, rows = read_csv(fake_sweep / "sweep.csv")
    assert len(rows) == len(DEPTHS) * len(LRS) * len(SEEDS)
    assert [row["job"] for row in rows] == [str(i) for i in range(len(rows))]  # job order, not text order
    assert columns[:7] == ["job", "train.steps", "model.activation", "model.depth", "optim.lr", "seed",
                           "status"]
    assert columns[7:9] == ["steps", "wall_s"]
    for row, (depth, lr, seed) in zip(rows, product(DEPTHS, LRS, SEEDS), strict=True):
        assert (row["model.depth"], row["optim.lr"], row["seed"]) == (str(depth), lr, str(seed))
        assert row["model.activation"] == "tanh"

    by_params = {(r["model.depth"], r["optim.lr"], r["seed"]): r for r in rows}
    unfinished = by_params[tuple(INCOMPLETE.values())]
    assert unfinished["status"] == "incomplete" and unfinished["final/test_acc"] == ""
    assert unfinished["last/step"] == "2"  # the row cut short by the kill is not read
    diverged = by_params[tuple(DIVERGED.values())]
    assert diverged["status"] == "diverged"
    assert (diverged["diverged_at_step"], diverged["last_finite_loss"], diverged["diverged_loss"]) == \
        ("3", "2.1", "inf")
    assert diverged["last/train/loss"] == "inf" and diverged["final/test_acc"] == ""
    assert sum(r["status"] == "completed" for r in rows) == len(rows) - 2
    assert float(by_params[("1", "0.1", "0")]["final/test_acc"]) == pytest.approx(0.3 + 0.1 - 0.02)
    assert "last/test/acc" in columns and not any("/L" in c for c in columns)  # no per-layer columns

    assert report.counts == {"completed": 6, "diverged": 1, "incomplete": 1}
    names = {p.name for p in report.plots}
    assert names == {"final_test_acc_vs_model.depth.png", "final_test_acc_vs_optim.lr.png",
                     "grad_norm_s_by_layer_step0.png"}  # seed is averaged over, not an axis
    for name in names:
        png = fake_sweep / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not list(fake_sweep.glob("**/.*.tmp"))  # atomic writes leave nothing behind


def test_values_are_typed_as_given(fake_sweep):
    columns, rows = table(load_sweep(fake_sweep))
    assert isinstance(rows[0]["model.depth"], int) and rows[0]["optim.lr"] == pytest.approx(1e-3)
    assert rows[0]["model.activation"] == "tanh" and rows[0]["job"] == 0
    assert [parse_override_value(t) for t in ("2", "1e-3", "true", "null", "'a b'", "relu", "inf")] == \
        [2, 1e-3, True, None, "a b", "relu", float("inf")]


def test_script_prints_a_summary_and_takes_out_and_no_plots(fake_sweep, tmp_path):
    out = tmp_path / "elsewhere" / "table.csv"
    proc = run_script(str(fake_sweep), "--out", str(out), "--no-plots", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "8 jobs (6 completed, 1 diverged, 1 incomplete)" in proc.stdout and str(out) in proc.stdout
    assert len(read_csv(out)[1]) == 8 and not (fake_sweep / "plots").exists()


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "does not exist"),
    (lambda d: d.mkdir(), "holds no job folders"),
    (lambda d: (d / "2026-01-01" / "0" / ".hydra").mkdir(parents=True), "holds sweeps: pass one"),
])
def test_no_sweep_is_one_line_and_exit_2(tmp_path, make, message):
    target = tmp_path / "target"
    make(target)
    proc = run_script(str(target), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("aggregate: error:")
    assert message in proc.stderr


def test_help_documents_the_outputs(tmp_path):
    proc = run_script("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for word in ("SWEEP_DIR", "sweep.csv", "incomplete", "last/<key>", "--out", "--plots", "--group-by"):
        assert word in proc.stdout


def test_real_multirun_end_to_end(tmp_path):
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true",
           "TESTBED_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "testbed", "-m", "train.steps=4", "train.log_every=2",
                           "model.width=8", "logger=none", "model.depth=1,2", f"hydra.sweep.dir={sweep_dir}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_script(str(sweep_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    columns, rows = read_csv(sweep_dir / "sweep.csv")
    assert [r["model.depth"] for r in rows] == ["1", "2"] and {r["status"] for r in rows} == {"completed"}
    assert {"final/test_acc", "cmp/grad_max_rel_err_max", "last/test/acc"} <= set(columns)
    summary = json.loads((sweep_dir / "1" / "summary.json").read_text())
    assert summary["num_layers"] == int(rows[1]["num_layers"]) == 3
    assert (sweep_dir / "plots" / "final_test_acc_vs_model.depth.png").exists()
    assert (sweep_dir / "plots" / "grad_norm_s_by_layer_step0.png").exists()
