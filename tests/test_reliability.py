"""Nothing lost when a run is killed, diverges, or gets bad input.

- kill and resume: a real ``python -m testbed`` SIGKILLed at a random step, resumed with
  ``train.resume=true``, ends bitwise equal to a run never stopped (metrics.jsonl, parameters);
  in-process the same for every engine, backend and optimiser family;
- sweeps re-run into their folder: finished jobs untouched, a killed one resumed, the rest run;
- SLURM-style requeue (submitit_local and a preemption signal) resumes in the same folder;
- bad input: one line, exit 2, nothing written;
- W&B crashing mid-run loses no local metrics; same seed, same bytes across processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import KillAt, Killed, compose_config

from testbed.app.checkpoint import CHECKPOINT, load_checkpoint, plan_run
from testbed.app.preflight import check, preflight
from testbed.app.run import resolve_device, train, write_summary
from testbed.app.schema import ConfigError
from testbed.data import write_idx
from testbed.tracking.files import atomic_write_bytes, read_metrics
from testbed.tracking.sweep import load_run
from testbed.tracking.wandb_logger import NullLogger

FAST = ["train.log_every=3", "model.width=16", "train.progress=false", "logger=none"]


def _env(cwd: Path) -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1",
            "TESTBED_CACHE": str(cwd / "cache")}


def run_app(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m testbed ARGS``, to the end."""
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=cwd, env=_env(cwd),
                          capture_output=True, text=True, timeout=300)


def run_apps(*commands: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Several ``python -m testbed`` at once (they are mostly start-up time)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run_app(*args, cwd=cwd), commands))


def start_app(*args: str, cwd: Path) -> subprocess.Popen:
    """``python -m testbed ARGS`` in the background; its output goes to a file (``output(proc)``)."""
    out = tempfile.TemporaryFile("w+", dir=cwd)
    proc = subprocess.Popen([sys.executable, "-m", "testbed", *args], cwd=cwd, env=_env(cwd), stdout=out,
                            stderr=subprocess.STDOUT, text=True)
    proc.output_file = out
    return proc


def output(proc: subprocess.Popen) -> str:
    proc.output_file.seek(0)
    return proc.output_file.read()


def wait_for_step(path: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    """Poll metrics.jsonl until a row with ``step`` or later is there; returns the last step seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before step {step}:\n{output(proc)[-2000:]}"
        if path.exists():
            rows = read_metrics(path)
            if rows and rows[-1]["step"] >= step:
                return rows[-1]["step"]
        time.sleep(0.002)
    raise AssertionError(f"no step {step} in {path} after {timeout} s")


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.output_file.close()


def params_equal_bitwise(a: Path, b: Path) -> bool:
    with np.load(a) as pa, np.load(b) as pb:
        return set(pa) == set(pb) and all(pa[k].dtype == pb[k].dtype and pa[k].tobytes() == pb[k].tobytes()
                                          for k in pa)


# -- kill a real process, resume, compare ------------------------------------------------------------

def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    args = [*FAST, "engine=manual", "train.steps=200", "train.checkpoint_every=5", "train.save_params=true"]
    reference, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    uninterrupted = start_app(*args, f"hydra.run.dir={reference}", cwd=tmp_path)
    at = random.Random(20240611).randint(7, 60)  # past the first checkpoint (after step 5)
    proc = start_app(*args, f"hydra.run.dir={killed}", cwd=tmp_path)
    wait_for_step(killed / "metrics.jsonl", at, proc)
    kill(proc)
    assert uninterrupted.wait(timeout=300) == 0, output(uninterrupted)

    # killed: every reader sees an unfinished run, and the checkpoint is whole
    assert not (killed / "summary.json").exists()
    assert load_run(killed).status == "incomplete"
    checkpoint = load_checkpoint(killed)
    assert checkpoint is not None and 5 <= checkpoint["loop"]["step"] <= 200

    resumed = run_app(*args, "train.resume=true", f"hydra.run.dir={killed}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from the checkpoint at step {checkpoint['loop']['step']}" in resumed.stdout
    assert not list(killed.glob(".*.tmp"))  # a temporary file of a write cut short is cleared
    assert (killed / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert params_equal_bitwise(killed / "params_final.npz", reference / "params_final.npz")
    assert params_equal_bitwise(killed / "params_init.npz", reference / "params_init.npz")
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (killed, reference))
    assert summary.pop("resumed_from") == [checkpoint["loop"]["step"]]
    assert {k: v for k, v in summary.items() if k != "wall_s"} == {k: v for k, v in expected.items()
                                                                     if k != "wall_s"}
    assert not (killed / CHECKPOINT).exists()  # a finished run drops its checkpoint

    # resuming a finished run does nothing, and says so
    before = {p.name: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()}
    again = run_app(*args, "train.resume=true", f"hydra.run.dir={killed}", cwd=tmp_path)
    assert again.returncode == 0 and "already completed" in again.stderr
    assert before == {p.name: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()}


@pytest.mark.parametrize("overrides", [
    ["engine=both", "optim=nesterov"],
    ["engine=manual", "engine.backend=numpy", "optim=adam", "model.dtype=float32"],
    ["engine=manual", "engine.backend=torch", "optim=adagrad", "optim.weight_decay=0.01"],
    ["engine=torch", "optim=rmsprop", "optim.centered=true", "optim.momentum=0.5", "data=blobs"],
    ["engine=both", "optim=adamw", "optim.clip_norm=0.5", "train.epochs=3", "data=blobs",
     "data.batch_size=100", "model.depth=0"],
], ids=["both-nesterov", "manual-numpy-adam-f32", "manual-torch-adagrad", "torch-rmsprop", "both-adamw-clip"])
def test_resume_in_process_is_bitwise_identical(tmp_path, overrides):
    cfg = compose_config("train.steps=30", "train.log_every=4", "model.width=8", "train.checkpoint_every=5",
                         "train.save_params=true", "train.progress=false", *overrides)
    reference, killed = tmp_path / "a", tmp_path / "b"
    expected = train(cfg, reference, NullLogger())
    with pytest.raises(Killed):
        train(cfg, killed, KillAt(9))
    checkpoint = load_checkpoint(killed)
    assert checkpoint["loop"]["step"] == 10  # killed at step 12: the rows after the checkpoint are redone
    summary = train(cfg, killed, NullLogger(), resume=checkpoint)
    assert (killed / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert params_equal_bitwise(killed / "params_final.npz", reference / "params_final.npz")
    assert summary.pop("resumed_from") == [10]
    assert {k: v for k, v in summary.items() if k != "wall_s"} == {k: v for k, v in expected.items()
                                                                     if k != "wall_s"}


def test_resume_twice_and_a_torn_last_line(tmp_path):
    """Killed twice, with half a line at the end of metrics.jsonl the second time."""
    cfg = compose_config("train.steps=30", "train.log_every=2", "model.width=8", "train.checkpoint_every=3",
                         "engine=manual", "train.progress=false", "data=spirals")
    reference, killed = tmp_path / "a", tmp_path / "b"
    train(cfg, reference, NullLogger())
    with pytest.raises(Killed):
        train(cfg, killed, KillAt(7))
    with pytest.raises(Killed):
        train(cfg, killed, KillAt(20), resume=load_checkpoint(killed))
    with open(killed / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 21, "train/lo')
    summary = train(cfg, killed, NullLogger(), resume=load_checkpoint(killed))
    assert summary["resumed_from"] == [6, 18]
    assert (killed / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()


# -- what a run does with the folder it finds ----------------------------------------------------------

PLAN_BASE = ["train.steps=12", "train.log_every=4", "model.width=8", "train.checkpoint_every=4",
             "engine=manual", "train.progress=false", "data=xor"]


def test_plan_rules(tmp_path):
    cfg = compose_config(*PLAN_BASE)
    single = plan_run(tmp_path / "new", cfg, multirun=False)
    assert single.action == "fresh" and not single.reason  # single runs do not resume by default
    sweep_job = plan_run(tmp_path / "new", cfg, multirun=True)
    assert sweep_job.action == "fresh" and "nothing to resume" in sweep_job.reason

    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        train(cfg, run_dir, KillAt(6))
    plan = plan_run(run_dir, cfg, multirun=True)
    assert plan.action == "resume" and plan.checkpoint["loop"]["step"] == 8 and "incomplete" in plan.reason
    assert plan_run(run_dir, cfg, multirun=False).action == "fresh"
    # keys that cannot change the numbers may differ
    resume_on = compose_config(*PLAN_BASE, "train.resume=true", "train.checkpoint_every=5", "logger=none")
    assert plan_run(run_dir, resume_on, multirun=False).action == "resume"
    resume_off = compose_config(*PLAN_BASE, "train.resume=false")
    assert plan_run(run_dir, resume_off, multirun=True).action == "fresh"

    write_summary(run_dir, {"status": "failed", "error": "RuntimeError: out of memory"})
    failed = plan_run(run_dir, cfg, multirun=True)
    assert failed.action == "resume" and failed.reason.startswith("failed")

    other = compose_config(*PLAN_BASE, "model.width=9", "train.resume=true")
    with pytest.raises(ConfigError, match=r"model.width: 8 -> 9") as error:
        plan_run(run_dir, other, multirun=False)
    assert "\n" not in str(error.value)
    replaced = plan_run(run_dir, other, multirun=True)
    assert replaced.action == "fresh" and "another config" in replaced.reason

    (run_dir / CHECKPOINT).unlink()
    assert "with no checkpoint" in plan_run(run_dir, cfg, multirun=True).reason
    for status in ("completed", "diverged"):
        write_summary(run_dir, {"status": status})
        assert plan_run(run_dir, cfg, multirun=True).action == "skip"


def test_a_new_run_clears_the_finished_mark_of_the_one_before(tmp_path):
    """A run started again into a finished run's folder and killed must not read as finished."""
    cfg = compose_config(*PLAN_BASE)
    write_summary(tmp_path, train(cfg, tmp_path, NullLogger()))
    assert load_run(tmp_path).status == "completed"
    with pytest.raises(Killed):
        train(cfg, tmp_path, KillAt(5))
    assert load_run(tmp_path).status == "incomplete"


def test_single_run_resume_with_another_config_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    first = run_app(*FAST, "engine=manual", "train.steps=6", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    proc = run_app(*FAST, "engine=manual", "train.steps=7", "train.resume=true", f"hydra.run.dir={run_dir}",
                   cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.steps: 6 -> 7" in lines[0]
    assert before == {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}


# -- sweeps re-run into their folder ---------------------------------------------------------------------

def test_sweep_rerun_skips_finished_resumes_killed_runs_the_rest(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *FAST, "engine=manual", "train.steps=150", "train.checkpoint_every=5", "seed=0,1,2",
            f"hydra.sweep.dir={sweep}"]
    proc = start_app(*args, cwd=tmp_path)
    wait_for_step(sweep / "1" / "metrics.jsonl", random.Random(7).randint(7, 40), proc)
    kill(proc)
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "completed"
    assert not (sweep / "1" / "summary.json").exists() and (sweep / "1" / CHECKPOINT).exists()
    assert not (sweep / "2").exists()
    outputs = ("config.yaml", "metrics.jsonl", "summary.json")  # Hydra appends to main.log
    finished = {name: (sweep / "0" / name).stat().st_mtime_ns for name in outputs}

    single = tmp_path / "single"
    same_alone = [*FAST, "engine=manual", "train.steps=150", "seed=1", f"hydra.run.dir={single}"]
    rerun, alone = run_apps(args, same_alone, cwd=tmp_path)
    assert rerun.returncode == 0 and alone.returncode == 0, rerun.stderr + alone.stderr
    log = rerun.stdout + rerun.stderr
    assert "job 0: already completed: nothing to do" in log
    assert "job 1: incomplete: resuming from the checkpoint at step" in log
    assert "job 2: nothing to resume" in log
    assert finished == {name: (sweep / "0" / name).stat().st_mtime_ns for name in outputs}
    summaries = [json.loads((sweep / str(j) / "summary.json").read_text()) for j in range(3)]
    assert [s["status"] for s in summaries] == ["completed"] * 3
    assert "resumed_from" in summaries[1] and "resumed_from" not in summaries[2]

    # job 1 equals the same run never stopped
    assert (sweep / "1" / "metrics.jsonl").read_bytes() == (single / "metrics.jsonl").read_bytes()


@pytest.mark.slow
def test_submitit_preemption_requeues_into_the_same_folder_and_resumes(tmp_path):
    """submitit_local stands in for SLURM: SIGUSR2 (what SLURM sends on preemption) makes submitit
    call the launcher's ``checkpoint`` and requeue the job; it lands in the same folder and resumes."""
    sweep = tmp_path / "sweep"
    args = ["-m", *FAST, "engine=manual", "train.steps=300", "train.checkpoint_every=5", "seed=0",
            "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"]
    proc = start_app(*args, cwd=tmp_path)
    wait_for_step(sweep / "0" / "metrics.jsonl", 20, proc)
    tasks = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
             if _cmdline(pid).count("submitit.core._submit") and str(sweep) in _cmdline(pid)]
    assert len(tasks) == 1, tasks
    os.kill(tasks[0], signal.SIGUSR2)
    assert proc.wait(timeout=300) == 0, output(proc)[-3000:]
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["resumed_from"]) == 1
    single = tmp_path / "single"
    assert run_app(*FAST, "engine=manual", "train.steps=300", "seed=0", f"hydra.run.dir={single}",
                   cwd=tmp_path).returncode == 0
    assert (sweep / "0" / "metrics.jsonl").read_bytes() == (single / "metrics.jsonl").read_bytes()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_submitit_requeue_calls_the_same_job_again():
    """What makes a requeued SLURM job land in its folder: the launcher's ``checkpoint`` resubmits
    the same callable with the same arguments (job number, hence hydra.sweep.subdir)."""
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    launcher = SlurmLauncher(submitit_folder="x")
    args = (["seed=1"], "hydra.sweep.dir", 3, "job_id_for_3", {})
    delayed = launcher.checkpoint(*args)
    assert delayed.function is launcher and delayed.args == args


# -- bad input: one line, exit 2, nothing written --------------------------------------------------------

@pytest.fixture(scope="module")
def idx_folders(tmp_path_factory):
    """A good IDX folder, and broken copies: truncated images, mislabeled (counts differ), not IDX."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)

    def make(name: str) -> Path:
        folder = root / name
        folder.mkdir()
        write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 255, (20, 4, 4), dtype=np.uint8))
        write_idx(folder / "train-labels-idx1-ubyte", rng.integers(0, 3, 20, dtype=np.uint8))
        write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 255, (8, 4, 4), dtype=np.uint8))
        write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 3, 8, dtype=np.uint8))
        return folder

    good = make("good")
    truncated = make("truncated")
    images = truncated / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-7])
    mislabeled = make("mislabeled")
    write_idx(mislabeled / "t10k-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    not_idx = make("not_idx")
    (not_idx / "train-labels-idx1-ubyte").write_bytes(b"PK\x03\x04 a zip file, not IDX")
    return {"good": good, "truncated": truncated, "mislabeled": mislabeled, "not_idx": not_idx}


@pytest.fixture
def not_writable(tmp_path):
    """A folder nobody can write under: below a regular file."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    return blocker / "sweeps"


BAD = [
    # (overrides, what the one line must name)
    ("optim.lr=inf", "optim.lr"), ("optim.lr=-inf", "optim.lr"), ("optim.lr=0", "optim.lr"),
    ("optim.lr=abc", "optim.lr"), ("model.width=1.5", "model.width"), ("model.width=-3", "model.width"),
    ("model.depth=two", "model.depth"), ("train.steps=-1", "train.steps"), ("train.steps=1e3", "train.steps"),
    ("train.log_every=0", "train.log_every"), ("train.checkpoint_every=-5", "train.checkpoint_every"),
    ("train.resume=perhaps", "train.resume"), ("train.max_loss=nan", "train.max_loss"),
    ("train.divergence_factor=1", "train.divergence_factor"), ("optim.clip_norm=0", "optim.clip_norm"),
    ("optim.betas=[0.9]", "optim.betas"), ("optim.nesterov=true", "optim.nesterov"),
    ("optim.eps=-1e-8", "optim.eps"), ("model.dtype=float16", "model.dtype"), ("engine=jax", "engine"),
    ("engine.backend=jax", "engine.backend"), ("device=tpu", "device"), ("seed=-1", "seed"),
    ("model.init_scale=inf", "model.init_scale"), ("+train.typo=1", "train.typo"), ("+typo=1", "typo"),
    ("data.options={nosie:0.1}", "nosie"), ("data=spirals +data.options={n_tran:5}", "n_tran"),
    ("model.init_params.std=0.1", "+model.init_params.std"),
    ("optim=lion", "optim"), ("model.depth=", "model.depth"), ("model.depth=[", "model.depth"),
    ("=3", "="), ("logger=neptune", "logger"),
    ("engine.backend=numpy device=cuda", "engine.backend"),
]


@pytest.mark.parametrize("override, names", BAD)
def test_bad_input_is_one_line_naming_what_is_wrong(override, names):
    with pytest.raises(ConfigError) as error:
        preflight(override.split())
    message = str(error.value)
    assert "\n" not in message and names in message, message


@pytest.mark.parametrize("which, names", [
    ("truncated", "truncated"), ("mislabeled", "labels but"), ("not_idx", "not an IDX file")])
def test_broken_idx_files_are_one_line(idx_folders, which, names):
    with pytest.raises(ConfigError) as error:
        preflight(["data=idx", f"data.path={idx_folders[which]}"])
    message = str(error.value)
    assert "\n" not in message and names in message and str(idx_folders[which]) in message
    assert preflight(["data=idx", f"data.path={idx_folders['good']}"]) == 1


def test_unwritable_output_folders_are_one_line(not_writable, tmp_path):
    with pytest.raises(ConfigError, match="hydra.sweep.dir=.* is not writable"):
        preflight([f"hydra.sweep.dir={not_writable}"], multirun=True)
    with pytest.raises(ConfigError, match="hydra.run.dir=.* is not writable"):
        preflight([f"hydra.run.dir={not_writable / 'run'}"])
    with pytest.raises(ConfigError, match="is not writable"):
        preflight(["hydra.sweep.dir=/proc/testbed-sweep"], multirun=True)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="Permission denied"):
            preflight([f"hydra.sweep.dir={locked / 'sweep'}"], multirun=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_where_there_is_none():
    with pytest.raises(ConfigError, match="no CUDA device") as error:
        preflight(["device=cuda"])
    assert "\n" not in str(error.value)
    with pytest.warns(UserWarning, match="running on cpu"):
        assert resolve_device("auto") == "cpu"
    assert preflight(["device=auto"]) == 1


def test_bad_input_from_the_command_line_exits_2_and_writes_nothing(tmp_path, idx_folders, not_writable):
    cases = [["optim.lr=inf"], ["data=idx", f"data.path={idx_folders['truncated']}"],
             ["-m", f"hydra.sweep.dir={not_writable}", "seed=0,1"]]
    if not torch.cuda.is_available():
        cases.append(["device=cuda"])
    run_dir = tmp_path / "run"
    for proc in run_apps(*[[*args, f"hydra.run.dir={run_dir}"] for args in cases], cwd=tmp_path):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("testbed: error: ")
    assert not run_dir.exists() and not not_writable.parent.is_dir()


# -- W&B, determinism, atomic files ----------------------------------------------------------------------

def test_wandb_crash_mid_run_loses_no_local_metrics(tmp_path):
    from testbed.tracking.wandb_logger import TrackingWarning, open_logger

    cfg = compose_config("train.steps=12", "train.log_every=2", "model.width=8", "engine=manual",
                         "train.progress=false", "data=xor")
    reference = tmp_path / "reference"
    train(cfg, reference, NullLogger())
    run_dir = tmp_path / "run"
    logger = open_logger("wandb", run_dir=run_dir, config={}, project="testbed", group=None,
                         job_type="test", name="crash", tags=[], mode="offline", init_timeout=30)
    calls = []

    def crash(row, *args, **kwargs):
        calls.append(row)
        if len(calls) > 2:
            raise ConnectionResetError("wandb-core went away")

    logger.run.log = crash
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(cfg, run_dir, logger)
        logger.finish(summary)
    assert summary["status"] == "completed"
    assert sum(issubclass(w.category, TrackingWarning) for w in caught) == 1
    assert (run_dir / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()


def test_same_seed_same_bytes_across_processes_side_by_side(tmp_path):
    """engine=both: the hand-written engine on torch arrays and the torch reference, two processes."""
    runs = run_apps(*[[*FAST, "train.steps=9", "optim=adam", f"hydra.run.dir={tmp_path / name}"]
                      for name in ("a", "b")], cwd=tmp_path)
    assert all(proc.returncode == 0 for proc in runs), [proc.stderr for proc in runs]
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (tmp_path / "b" / "metrics.jsonl").read_bytes()


def test_atomic_write_leaves_the_old_file_or_the_new_never_half(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_write_bytes(path, b"old")

    def killed_while_writing(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_check_reports_the_single_runs_plan(tmp_path):
    checked = check([f"hydra.run.dir={tmp_path / 'run'}", "train.resume=true"])
    assert checked.count == 1 and checked.run_dir == tmp_path / "run" and checked.plan.action == "fresh"
    assert check(["seed=0,1"], multirun=True).plan is None
