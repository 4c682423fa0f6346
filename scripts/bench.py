"""Speed of the hand-written engine, measured side by side with torch autograd in one run.

    python scripts/bench.py                  # CPU (and CUDA when present): results/bench/<device>.md
    python scripts/bench.py --device cuda    # CUDA only: results/bench/<card name>.md
    python scripts/bench.py --quick          # a smoke run: 3 repeats, the first shape, K <= 16
    python scripts/bench.py --only sweep --sweep-steps 200   # rerun one section of the file

Sections (``--only step,replicas,graph,sweep``; the others are kept from the existing file):
- step: one training step (forward, backward, SGD update), manual engine vs torch autograd;
  (forward+backward)/forward time against the FLOP ratio (about 3); achieved FLOP/s against a
  plain matmul of the same dtype and shape. On CPU the 4/64/32 rows also at one thread, as sweep
  jobs run (one job per core, OMP_NUM_THREADS=1).
- replicas: K models of one shape stacked in batched matmuls vs a loop of per-replica autograd models.
- graph (CUDA): the manual step captured once as a CUDA graph and replayed, vs eager.
- sweep: wall time of the ``vanishing`` preset's sweep, batching sweeper vs basic sweeper.

Every figure is a median over repeats after a warm-up call, with device synchronisation; the
timings compared in one row are interleaved so that machine noise hits them alike. The file is
written once, at the end (atomically); SIGTERM or Ctrl-C writes what was measured until then.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed.engine import MLP, Backend, MLPSpec, get_optimizer, init_params, init_replica_params  # noqa: E402
from testbed.reference import build_torch_loss, build_torch_mlp, build_torch_optimizer  # noqa: E402
from testbed.theory.backward_cost import mlp_flops  # noqa: E402
from testbed.training import ReplicaTrainer, TorchTrainer, manual_step, replica_block, torch_step  # noqa: E402

Shape = tuple[int, int, int]  # depth, width, batch
SHAPES: list[Shape] = [(4, 64, 32), (8, 512, 256), (20, 1024, 512), (50, 256, 128)]
CUDA_SHAPES: list[Shape] = SHAPES + [(8, 4096, 4096)]
ONE_THREAD_SHAPES: list[Shape] = [(4, 64, 32)]  # CPU rows also measured at one thread
STEP_ROUNDS_PER_REPEAT = 3  # step table (the targets): 3x the rounds of --repeats, each half as long
ROUNDS_MAX_S = 20.0  # a row's interleaved rounds stop here (at least 3 are taken)
CPU_REPLICA_SHAPES: list[Shape] = [(4, 64, 32), (20, 256, 128)]
CUDA_REPLICA_SHAPES: list[Shape] = [(20, 256, 128)]
GRAPH_SHAPES: list[Shape] = [(4, 64, 32), (20, 256, 128), (8, 512, 256)]
GRAPH_REPLICAS: tuple[int, Shape] = (64, (20, 256, 128))
KS = [1, 16, 64, 256]
IN_FEATURES, CLASSES = 64, 10
LOOP_MODELS = 16  # the autograd loop times at most this many models and scales to K
SWEEP_PRESET, SWEEP_TOL = "vanishing", 1e-10

SECTIONS = {  # key -> heading (the file's "## " lines; --only reruns some and keeps the others)
    "step": "One training step (forward, backward, SGD update), manual engine vs torch autograd",
    "replicas": "Replicas: K independent models of one shape in one program",
    "graph": "CUDA graphs: the manual step captured once and replayed",
    "sweep": "Sweep wall time, batched vs unbatched",
}


class Interrupted(Exception):
    """SIGTERM (e.g. from `timeout`): write what was measured and stop."""


def _on_sigterm(signum, frame):
    raise Interrupted(f"signal {signum}")


# ----------------------------------------------------------------------------------------- timing


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable, device: str, number: int) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(number):
        fn()
    sync(device)
    return (time.perf_counter() - start) / number


def interleaved(fns: dict[str, Callable], device: str, repeats: int, budget_s: float = 0.2,
                max_s: float = ROUNDS_MAX_S, samples: dict[str, list[float]] | None = None
                ) -> tuple[dict[str, float], int]:
    """Median seconds per call of each function, repeats interleaved (the order reversed every
    other round), after a warm-up call.

    Each sample runs a function ``budget_s / (one call)`` times (at least once). When a round of
    samples takes long (huge shapes), fewer repeats (at least 3) keep the total under ``max_s``;
    returns (medians, repeats used). ``samples``, when given, receives every round's seconds per
    call of each function, in round order (for ratios taken within a round: ``paired_ratio``).
    """
    for fn in fns.values():
        fn()
    single = {k: max(timed(fn, device, 1), 1e-6) for k, fn in fns.items()}
    number = {k: max(1, int(budget_s / s)) for k, s in single.items()}
    round_s = sum(number[k] * single[k] for k in fns)
    repeats = max(min(3, repeats), min(repeats, int(max_s / round_s)))
    rounds: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):  # the order alternates (ABBA): no function always follows the same one
        for name in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            rounds[name].append(timed(fns[name], device, number[name]))
    if samples is not None:
        samples.update(rounds)
    return {k: float(np.median(v)) for k, v in rounds.items()}, repeats


def paired_ratio(samples: dict[str, list[float]], a: str, b: str) -> tuple[float, float, float]:
    """(median, smallest, largest) over rounds of ``a``'s time / ``b``'s time in the same round.

    The two samples of a round are taken back to back, so a slow spell of the machine (seconds
    long here: other tenants of the host's cores) slows both and cancels in their ratio, where
    a ratio of two medians can pair a slow sample of one with a fast one of the other.
    """
    ratios = np.array(samples[a]) / np.array(samples[b])
    return float(np.median(ratios)), float(ratios.min()), float(ratios.max())


@contextmanager
def cpu_threads(n: int):
    """torch and numpy's BLAS at ``n`` threads inside the block; restored after."""
    old = torch.get_num_threads()
    try:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(n)
    except ImportError:
        limits = nullcontext()
    torch.set_num_threads(n)
    try:
        with limits:
            yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def tf32(enabled: bool | None):
    """TF32 matmuls on CUDA on/off inside the block (None: leave as is); restored after."""
    old = torch.backends.cuda.matmul.allow_tf32
    if enabled is not None:
        torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


# ------------------------------------------------------------------------------------------ models


@dataclass
class Bench:
    """One shape's manual and autograd steps on the same data and initial parameters."""

    spec: MLPSpec
    net: MLP
    opt: object
    x: object
    y: object
    manual_step: Callable  # the app's step that logs nothing (plain SGD: the update fused into backward)
    manual_forward: Callable
    autograd_step: Callable
    manual_unfused_step: Callable | None = None


def build(depth: int, width: int, batch: int, dtype: str, device: str, backend: str = "torch",
          autograd: bool = True) -> Bench:
    spec = MLPSpec(IN_FEATURES, CLASSES, depth=depth, width=width, activation="relu", init="kaiming_normal")
    initial = init_params(spec, 0)
    be = Backend(backend, dtype, device if backend == "torch" else "cpu")
    net = MLP(spec, {k: be.asarray(v) for k, v in initial.items()})
    opt = get_optimizer("sgd", lr=1e-3)
    rng = np.random.default_rng(0)
    x_np, y_np = rng.normal(size=(batch, IN_FEATURES)), rng.integers(0, CLASSES, batch)
    x, y = be.asarray(x_np), be.labels(y_np)

    def fused_step():  # as the app's steps that log nothing: plain SGD fuses its update (MLP.sgd_step)
        manual_step(net, opt, x, y, fuse_sgd=True)

    def unfused_step():  # backward forms every gradient, then the update (any other optimiser)
        manual_step(net, opt, x, y)

    def manual_forward():
        net.loss(x, y)

    autograd_step = None
    if autograd:
        model = build_torch_mlp(spec, initial, device=device, dtype=dtype)
        loss_fn = build_torch_loss("cross_entropy")
        torch_opt = build_torch_optimizer("sgd", model.parameters(), lr=1e-3)
        xt = torch.as_tensor(x_np).to(device, model[0].weight.dtype)
        yt = torch.as_tensor(y_np).to(device)

        def autograd_step():
            torch_step(model, torch_opt, loss_fn, xt, yt)

    return Bench(spec, net, opt, x, y, fused_step, manual_forward, autograd_step, unfused_step)


def build_stacked(k: int, depth: int, width: int, batch: int, device: str) -> Bench:
    """K replicas of one shape, parameters stacked on a leading axis, float32, SGD with a learning
    rate per replica (as ``train.replicas=K``)."""
    spec = MLPSpec(IN_FEATURES, CLASSES, depth=depth, width=width, activation="relu",
                   init="kaiming_normal")
    be = Backend("torch", "float32", device)
    net = MLP(spec, {n: be.asarray(v) for n, v in init_replica_params(spec, list(range(k))).items()})
    opt = get_optimizer("sgd", lr=be.asarray(np.full(k, 1e-3)))
    rng = np.random.default_rng(0)
    x = be.asarray(rng.normal(size=(k, batch, IN_FEATURES)))
    y = be.labels(rng.integers(0, CLASSES, (k, batch)))

    def stacked_step():  # as the app's steps that log nothing: the update fused into backward
        manual_step(net, opt, x, y, fuse_sgd=True)

    return Bench(spec, net, opt, x, y, stacked_step, lambda: net.loss(x, y), None)


def replica_data(batch: int, seed: int = 0):
    """A train split of ``batch`` rows (and a test split), as the app's trainers load data."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, IN_FEATURES)), rng.integers(0, CLASSES, batch),
            rng.normal(size=(batch, IN_FEATURES)), rng.integers(0, CLASSES, batch))


def replica_steps(k: int, depth: int, width: int, batch: int, device: str):
    """One step of K replicas as ``train.replicas=K`` trains them (``testbed.training``'s
    ReplicaTrainer, float32, SGD, in blocks of ``replica_block``), and one step of a loop over
    min(K, 16) of the torch autograd trainers ``engine=torch`` runs, each replica on its own
    minibatch order; returns (stacked step, loop trainers, loop step, blocks)."""
    spec = MLPSpec(IN_FEATURES, CLASSES, depth=depth, width=width, activation="relu", init="kaiming_normal")
    be = Backend("torch", "float32", device)
    data = replica_data(batch)
    trainer = ReplicaTrainer(spec, init_replica_params(spec, list(range(k))), be, "sgd", {}, [1e-3] * k,
                             block=replica_block(spec, batch, be))
    trainer.load_data(*data)
    rng = np.random.default_rng(1)
    idx = np.stack([rng.permutation(batch) for _ in range(k)])
    loop = []
    for r in range(min(k, LOOP_MODELS)):
        model = TorchTrainer(spec, init_params(spec, r), device, "float32", "sgd", {"lr": 1e-3})
        model.load_data(*data)
        loop.append(model)

    def loop_step():  # up to 16 models, scaled: the loop's cost is linear in K
        for r, model in enumerate(loop):
            model.step(idx[r])

    return lambda: trainer.step(idx), loop, loop_step, len(trainer.blocks)


def shape_str(shape: Shape) -> str:
    return "/".join(map(str, shape))


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


# ---------------------------------------------------------------------------------------- sections


@dataclass
class Settings:
    device: str
    repeats: int
    budget_s: float
    shapes: list[Shape]
    dtypes: list[str]
    replica_shapes: list[Shape]
    ks: list[int]
    graph_shapes: list[Shape]
    graph_replicas: tuple[int, Shape]
    graph_on_cpu: bool
    sweep_steps: int | None
    sweep_repeats: int
    sweep_timeout_s: float
    keep_sweeps: bool


def step_table(out: list[str], s: Settings) -> None:
    all_threads = torch.get_num_threads()
    repeats, budget_s = STEP_ROUNDS_PER_REPEAT * s.repeats, s.budget_s / 2
    out += [f"Medians of up to {repeats} interleaved rounds of {budget_s:g} s per step (fewer for the "
            f"slow shapes: a row's rounds within {ROUNDS_MAX_S:g} s, at least 3), the order reversed every "
            "other round. "
            "manual/autograd: the median over the rounds of the ratio of the two steps' times within a "
            "round (taken back to back, so that a slow spell of the machine hits both); its range: the "
            "smallest and largest round. "
            "Threads: torch's intra-op threads "
            "(CPU); the one-thread rows are how sweep jobs run (one job per core, OMP_NUM_THREADS=1). "
            "FLOP ratio: the matmul FLOPs of forward+backward over forward's (the floor of the time "
            "ratio, about 3). The manual step is the app's step that logs nothing: with plain SGD each "
            "weight's update is fused into its gradient's matrix product (`MLP.sgd_step`); unfused: "
            "backward forms every gradient and the update follows (the step of every other optimiser, "
            "and of `engine=both`).", "",
            "| depth/width/batch | dtype | threads | manual step ms | autograd step ms | manual/autograd | "
            "range over rounds | unfused/autograd | (fwd+bwd)/fwd time | FLOP ratio (fwd+bwd)/fwd | "
            "manual GFLOP/s | matmul GFLOP/s | numpy manual step ms | numpy/torch-manual |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios: list[tuple[Shape, str, str, float]] = []
    for shape in s.shapes:
        depth, width, batch = shape
        settings = [all_threads]
        if s.device == "cpu" and shape in ONE_THREAD_SHAPES and all_threads != 1:
            settings.append(1)
        for threads in settings:
            for label in s.dtypes:
                dtype = "float32" if label.startswith("float32") else label
                allow = {"float32-tf32-on": True, "float32-tf32-off": False}.get(label)
                with cpu_threads(threads) if s.device == "cpu" else nullcontext(), tf32(allow):
                    b = build(depth, width, batch, dtype, s.device)
                    fns = {"manual": b.manual_step, "autograd": b.autograd_step,
                           "unfused": b.manual_unfused_step, "forward": b.manual_forward}
                    rounds: dict[str, list[float]] = {}
                    t, _ = interleaved(fns, s.device, repeats, budget_s, samples=rounds)
                    ratio, lowest, highest = paired_ratio(rounds, "manual", "autograd")
                    unfused = paired_ratio(rounds, "unfused", "autograd")[0]
                    numpy_ms = ratio_np = ""
                    if s.device == "cpu":
                        # timed on its own: numpy's BLAS threads, still spinning after a numpy call,
                        # slow the torch call that follows (interleaved, the torch step measured 2x slower)
                        numpy_step = build(depth, width, batch, dtype, "cpu", backend="numpy",
                                           autograd=False).manual_step
                        t["numpy"] = interleaved({"numpy": numpy_step}, s.device, s.repeats,
                                                 s.budget_s)[0]["numpy"]
                        numpy_ms, ratio_np = f"{t['numpy'] * 1e3:.3f}", f"{t['numpy'] / t['manual']:.2f}"
                    mm = matmul_flops_per_s(width, batch, dtype, s.device, max(3, s.repeats // 2), s.budget_s)
                flops = mlp_flops(batch, b.spec.layer_sizes)
                achieved = (flops.forward + flops.backward) / t["manual"]
                thread_label = str(threads) if s.device == "cpu" else "-"
                ratios.append((shape, label, thread_label, ratio))
                out.append(
                    f"| {shape_str(shape)} | {label} | {thread_label} | {t['manual'] * 1e3:.3f} | "
                    f"{t['autograd'] * 1e3:.3f} | **{ratio:.2f}** | {lowest:.2f}-{highest:.2f} | "
                    f"{unfused:.2f} | {t['manual'] / t['forward']:.2f} | "
                    f"{(flops.forward + flops.backward) / flops.forward:.2f} | {achieved / 1e9:.1f} | "
                    f"{mm / 1e9:.1f} | {numpy_ms} | {ratio_np} |")
                print(out[-1], flush=True)
    if ratios:
        worst = max(ratios, key=lambda r: r[3])
        out += ["", f"Target manual/autograd <= 1.0 at every row: {verdict(worst[3] <= 1.0)} (largest "
                f"{worst[3]:.2f}, at {shape_str(worst[0])} {worst[1]}, threads {worst[2]})."]
        small = [r for r in ratios if r[0] == (4, 64, 32)]
        if small:
            worst = max(small, key=lambda r: r[3])
            out.append(f"Target manual/autograd <= 0.6 at 4/64/32: {verdict(worst[3] <= 0.6)} (largest "
                       f"{worst[3]:.2f}, {worst[1]}, threads {worst[2]}).")


def matmul_flops_per_s(width: int, batch: int, dtype: str, device: str, repeats: int,
                       budget_s: float = 0.2) -> float:
    a = torch.randn(batch, width, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(width, width, device=device, dtype=getattr(torch, dtype))
    seconds = interleaved({"mm": lambda: a @ b}, device, repeats, budget_s)[0]["mm"]
    return 2 * batch * width * width / seconds


def replica_table(out: list[str], s: Settings) -> None:
    """Replica-steps/s: K replicas stacked in batched matmuls vs a loop of K autograd models."""
    tf = ", TF32 off (torch's default)" if s.device == "cuda" else ""
    out += [f"float32{tf}, SGD, medians of up to {s.repeats} interleaved repeats. The stacked column "
            "times the app's replica trainer (`train.replicas=K`: each replica's minibatch gathered, "
            "the step, the K losses copied to the host), whose replicas run in blocks "
            "(`train.replica_block`, automatic: on CPU a block's largest matrix within 4 MiB, on CUDA "
            "one block). The loop column "
            f"times a loop over min(K, {LOOP_MODELS}) of the app's torch autograd trainers (`engine=torch`, "
            "the same minibatch gathering and loss copy), one step each, "
            "and scales it to K (its cost is linear in K): replica-steps/s = models / loop time."]
    for shape in s.replica_shapes:
        depth, width, batch = shape
        out += ["", f"Shape depth {depth}, width {width}, batch {batch}.", "",
                "| K | blocks | stacked manual replica-steps/s | autograd loop replica-steps/s | speed-up | "
                "repeats |",
                "|---|---|---|---|---|---|"]
        speedups: dict[int, float] = {}
        for k in s.ks:
            with tf32(False if s.device == "cuda" else None):
                stacked_step, loop, loop_step, blocks = replica_steps(k, depth, width, batch, s.device)
                t, reps = interleaved({"stacked": stacked_step, "loop": loop_step}, s.device, s.repeats,
                                      s.budget_s)
            del stacked_step, loop, loop_step
            if s.device == "cuda":
                torch.cuda.empty_cache()
            stacked_rate, loop_rate = k / t["stacked"], min(k, LOOP_MODELS) / t["loop"]
            speedups[k] = stacked_rate / loop_rate
            out.append(f"| {k} | {blocks} | {stacked_rate:.0f} | {loop_rate:.0f} | **{speedups[k]:.1f}x** | "
                       f"{reps} |")
            print(out[-1], flush=True)
        if speedups:
            slowest = min(speedups, key=speedups.get)
            out += ["", f"Stacked >= the loop at every K ({shape_str(shape)}): "
                    f"{verdict(speedups[slowest] >= 1.0)} (smallest speed-up {speedups[slowest]:.2f}x, "
                    f"at K={slowest})."]
            if s.device == "cuda" and shape == (20, 256, 128) and 64 in speedups:
                out.append(f"Target K=64 >= 50x the loop: {verdict(speedups[64] >= 50)} "
                           f"({speedups[64]:.1f}x).")


def max_relative_difference(a: dict, b: dict) -> float:
    """max over keys of max|a - b| / max|b| (parameters of two runs from the same init)."""
    worst = 0.0
    for key in b:
        ref = b[key].double()
        scale = float(ref.abs().max()) or 1.0
        worst = max(worst, float((a[key].double() - ref).abs().max()) / scale)
    return worst


def graph_table(out: list[str], s: Settings) -> None:
    if s.device != "cuda" and not s.graph_on_cpu:
        out.append("Not measured: CUDA graphs need a CUDA device (see the CUDA file).")
        return
    try:
        from testbed.engine.cuda_graph import GraphedStep
    except ImportError as error:
        out.append(f"Not measured: `testbed.engine.cuda_graph` cannot be imported ({error}).")
        return
    capture = None if s.device == "cuda" else False
    if capture is False:
        out += ["**Smoke run on CPU**: `GraphedStep(..., capture=False)` runs the static-buffer code "
                "eagerly; no graph is captured, the speed-ups mean nothing.", ""]
    out += [f"float32{', TF32 off' if s.device == 'cuda' else ''}, SGD, medians of up to {s.repeats} "
            "interleaved repeats. `GraphedStep` (`engine.cuda_graph=true`) captures forward, backward "
            "and update once and replays the graph each step; eager: the same step not captured "
            "(on both sides the app's step that logs nothing: the SGD update fused into backward). "
            "Difference: from the same initial parameters, 20 steps eager vs 20 graphed, "
            "max |graphed - eager| / max |eager| over the parameter tensors.", "",
            "| depth/width/batch | K | eager manual step ms | graphed step ms | graphed speed-up | "
            "autograd step ms | graphed/autograd | difference after 20 steps |",
            "|---|---|---|---|---|---|---|---|"]
    k_rep, shape_rep = s.graph_replicas
    rows = [(shape, 1) for shape in s.graph_shapes] + ([(shape_rep, k_rep)] if k_rep else [])
    for shape, k in rows:
        try:
            with tf32(False if s.device == "cuda" else None):
                out.append(graph_row(GraphedStep, capture, shape, k, s))
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as error:  # one failing row must not lose the others
            traceback.print_exc()
            out.append(f"| {shape_str(shape)} | {k} | failed: {type(error).__name__}: "
                       f"{str(error).splitlines()[0][:200] if str(error) else ''} |||||||")
        print(out[-1], flush=True)


def graph_row(GraphedStep, capture, shape: Shape, k: int, s: Settings) -> str:
    depth, width, batch = shape

    def make() -> Bench:
        if k == 1:
            return build(depth, width, batch, "float32", s.device)
        return build_stacked(k, depth, width, batch, s.device)

    # equality: the same initial parameters, 20 steps each way
    eager, graphed = make(), make()
    initial = {key: value.clone() for key, value in eager.net.params.items()}
    replay = GraphedStep(graphed.net, graphed.opt, capture=capture)

    def graphed_step():  # the training step with cuda_graph, fused as the eager one
        manual_step(graphed.net, graphed.opt, graphed.x, graphed.y, fuse_sgd=True, graphed=replay)

    for _ in range(20):  # the eager step the graph captures: the update fused into backward
        eager.manual_step()
        graphed_step()
    sync(s.device)
    difference = max_relative_difference(graphed.net.params, eager.net.params)
    weights = {key: value for key, value in eager.net.params.items() if key.startswith("W")}
    moved = max_relative_difference(initial, weights)  # what a missed update would show
    # timing (the parameters keep training; the speed does not depend on their values)
    fns = {"eager": eager.manual_step, "graphed": graphed_step}
    if k == 1:
        fns["autograd"] = eager.autograd_step
    t, _ = interleaved(fns, s.device, s.repeats, s.budget_s)
    autograd_ms = f"{t['autograd'] * 1e3:.3f}" if k == 1 else "-"
    vs_autograd = f"{t['graphed'] / t['autograd']:.2f}" if k == 1 else "-"
    return (f"| {shape_str(shape)} | {k} | {t['eager'] * 1e3:.3f} | {t['graphed'] * 1e3:.3f} | "
            f"**{t['eager'] / t['graphed']:.2f}x** | {autograd_ms} | {vs_autograd} | {difference:.1e} "
            f"(the steps moved the weights {moved:.1e}) |")


# ------------------------------------------------------------------------------------------- sweep


def sweep_jobs(sweep_dir: Path) -> tuple[int, int, int]:
    """(jobs, replica jobs, points) of a sweep folder, batched or not."""
    points = [p for p in sweep_dir.iterdir() if p.name.isdigit() and p.is_dir()]
    groups = sorted((sweep_dir / ".batched").glob("*/summary.json"))
    grouped = sum(len(json.loads(g.read_text()).get("replicas", [])) for g in groups)
    return len(groups) + len(points) - grouped, len(groups), len(points)


def compare_sweeps(a: Path, b: Path) -> tuple[float, int, list[str]]:
    """Max relative difference of every point's final losses (summary.json) between two sweeps;
    returns (max difference, points compared, problems)."""
    problems, worst, compared = [], 0.0, 0
    names_a = {p.name for p in a.iterdir() if p.name.isdigit()}
    names_b = {p.name for p in b.iterdir() if p.name.isdigit()}
    if names_a != names_b:
        problems.append(f"points differ: {sorted(names_a ^ names_b, key=int)}")
    for name in sorted(names_a & names_b, key=int):
        try:
            sa, sb = (json.loads((d / name / "summary.json").read_text()) for d in (a, b))
        except (OSError, ValueError) as error:
            problems.append(f"point {name}: {error}")
            continue
        if sa.get("status") != sb.get("status"):
            problems.append(f"point {name}: status {sa.get('status')} vs {sb.get('status')}")
        keys = [k for k in sa if k.startswith("final/") and k.endswith("loss")]
        if not keys:
            problems.append(f"point {name}: no final losses")
        for key in keys:
            x, y = sa.get(key), sb.get(key)
            if not isinstance(x, float) or not isinstance(y, float):
                problems.append(f"point {name}: {key} {x} vs {y}")
                continue
            worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-300))
        compared += 1
    return worst, compared, problems


def sweep_section(out: list[str], s: Settings) -> None:
    overrides = [f"+experiment={SWEEP_PRESET}", "logger=none", "train.progress=false"]
    if s.sweep_steps:
        overrides.append(f"train.steps={s.sweep_steps}")
    if s.device == "cuda":
        overrides.append("device=cuda")
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    kinds = {"unbatched": [], "batched": ["hydra/sweeper=batched"]}
    walls: dict[str, list[float]] = {k: [] for k in kinds}
    steps = f"train.steps={s.sweep_steps}" if s.sweep_steps else "the preset's train.steps"
    out += [f"The `{SWEEP_PRESET}` preset's sweep (`python -m testbed -m +experiment={SWEEP_PRESET}`, "
            f"{steps}, float64: the app's default dtype), {'device=cuda, ' if s.device == 'cuda' else ''}"
            "run with the batching sweeper "
            "(`hydra/sweeper=batched`: points differing only in seed, optim.lr, model.init, "
            "model.init_scale train together as replicas in one job) and with the basic sweeper (one "
            "job per point). Both: the basic launcher (jobs one after another in one process), "
            "OMP_NUM_THREADS=1 (as presets run their jobs), `logger=none` (W&B offline adds seconds "
            f"per job). Wall seconds of the whole command, median of {s.sweep_repeats} interleaved "
            "run(s), unbatched first.", ""]
    try:
        for repeat in range(s.sweep_repeats):
            for kind, extra in kinds.items():
                sweep_dir = root / f"{kind}-{repeat}"
                command = [sys.executable, "-m", "testbed", "-m", *overrides, *extra,
                           f"hydra.sweep.dir={sweep_dir}"]
                print(f"sweep: {' '.join(command[1:])}", flush=True)
                start = time.perf_counter()
                proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                      timeout=s.sweep_timeout_s)
                wall = time.perf_counter() - start
                (root / f"{kind}-{repeat}.log").write_text(proc.stdout + proc.stderr)
                if proc.returncode != 0:
                    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                    out += [f"**Failed**: the {kind} sweep exited {proc.returncode} after {wall:.1f} s:", "",
                            "```", tail, "```"]
                    print(tail, file=sys.stderr)
                    return
                walls[kind].append(wall)
                print(f"sweep: {kind} {wall:.1f} s", flush=True)
        unbatched, batched = (float(np.median(walls[k])) for k in kinds)
        jobs_u, _, points_u = sweep_jobs(root / "unbatched-0")
        jobs_b, groups_b, points_b = sweep_jobs(root / "batched-0")
        difference, compared, problems = compare_sweeps(root / "batched-0", root / "unbatched-0")
        out += ["| sweeper | points | jobs | wall s |", "|---|---|---|---|",
                f"| basic (unbatched) | {points_u} | {jobs_u} | {unbatched:.1f} |",
                f"| batched | {points_b} | {jobs_b} ({groups_b} replica jobs) | {batched:.1f} |", "",
                f"Batched/unbatched wall time: **{batched / unbatched:.2f}** "
                f"({unbatched / batched:.1f}x faster).",
                f"Same results: max relative difference of the final losses (summary.json) over "
                f"{compared} points: {difference:.1e} (<= {SWEEP_TOL:g}: "
                f"{verdict(difference <= SWEEP_TOL and not problems)})."]
        if problems:
            out.append("Problems: " + "; ".join(problems[:10]))
        for line in out[-8:]:
            print(line, flush=True)
    except subprocess.TimeoutExpired as error:
        out.append(f"**Failed**: a sweep ran past {error.timeout:.0f} s (`--sweep-timeout`).")
    finally:
        if s.keep_sweeps:
            print(f"sweep folders kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


SECTION_FNS = {"step": step_table, "replicas": replica_table, "graph": graph_table, "sweep": sweep_section}


# -------------------------------------------------------------------------------------------- file


def card_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def file_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name().replace(" ", "_").replace("/", "_") + ".md"
    return f"cpu-{torch.get_num_threads()}threads.md"


def header(device: str, argv: list[str]) -> list[str]:
    versions = f"torch {torch.__version__}"
    if device == "cuda":
        versions += f" (CUDA {torch.version.cuda})"
    return [f"# Benchmark: {card_name(device)} ({device})", "",
            f"{versions}, Python {platform.python_version()}, torch CPU threads: "
            f"{torch.get_num_threads()} on {os.cpu_count()} cores. Medians of repeated runs, warm-up "
            "excluded, device-synchronised timing. Generated by "
            f"`python scripts/bench.py{' ' + ' '.join(argv) if argv else ''}` on "
            f"{datetime.date.today().isoformat()}."]


def old_sections(path: Path) -> dict[str, list[str]]:
    """The sections of an existing file, by key (for --only)."""
    if not path.exists():
        return {}
    titles = {title: key for key, title in SECTIONS.items()}
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            current = titles.get(line[3:].strip())
            if current:
                sections[current] = []
            continue
        if current:
            sections[current].append(line)
    for body in sections.values():  # without the blank lines around it
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
    return sections


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def parse_shape(text: str) -> Shape:
    parts = [int(p) for p in text.replace("/", ",").split(",")]
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"a shape is depth,width,batch (e.g. 4,64,32), not {text!r}")
    return parts[0], parts[1], parts[2]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cpu, and cuda if present")
    parser.add_argument("--repeats", type=int, default=7, help="repeats per timing (medians); default 7")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds per timing sample (default 0.2; --quick 0.05)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 3 repeats, the first shape, K in {1, 16}, --sweep-steps 20")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {','.join(SECTIONS)}; the file keeps the others")
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=None,
                        help="depth,width,batch shapes of the step and graph tables, e.g. 4,64,32 8,512,256")
    parser.add_argument("--ks", default=None, help="replica counts, e.g. 1,16,64,256 (the default)")
    parser.add_argument("--graph-on-cpu", action="store_true",
                        help="run the graph section on CPU with capture=False (a smoke test of its code)")
    parser.add_argument("--sweep-steps", type=int, default=None,
                        help="train.steps of the sweep's runs (default: the preset's own, 1000; --quick 20)")
    parser.add_argument("--sweep-repeats", type=int, default=1, help="runs of each sweep (median); default 1")
    parser.add_argument("--sweep-timeout", type=float, default=1800, help="seconds per sweep command")
    parser.add_argument("--keep-sweeps", action="store_true", help="keep the temporary sweep folders")
    parser.add_argument("--no-sweep", action="store_true", help="skip the sweep section")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args(argv)
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    if unknown := set(args.only) - set(SECTIONS):
        parser.error(f"--only: unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    if args.no_sweep:
        args.only = [k for k in args.only if k != "sweep"]
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    return args


def settings_for(device: str, args: argparse.Namespace) -> Settings:
    quick = args.quick
    if device == "cuda":
        shapes, dtypes = CUDA_SHAPES, ["float32-tf32-on", "float32-tf32-off", "float64"]
        replica_shapes = CUDA_REPLICA_SHAPES
    else:
        shapes, dtypes, replica_shapes = SHAPES, ["float32", "float64"], CPU_REPLICA_SHAPES
    ks = [int(k) for k in args.ks.split(",")] if args.ks else (KS[:2] if quick else KS)
    graph_shapes, graph_replicas = GRAPH_SHAPES, GRAPH_REPLICAS
    if quick:
        shapes, graph_shapes, graph_replicas = shapes[:1], graph_shapes[:1], (4, GRAPH_REPLICAS[1])
    if args.shapes:
        shapes = graph_shapes = args.shapes
    return Settings(
        device=device, repeats=3 if quick else args.repeats,
        budget_s=args.budget if args.budget is not None else (0.05 if quick else 0.2),
        shapes=shapes, dtypes=dtypes, replica_shapes=replica_shapes, ks=ks, graph_shapes=graph_shapes,
        graph_replicas=graph_replicas, graph_on_cpu=args.graph_on_cpu,
        sweep_steps=args.sweep_steps if args.sweep_steps is not None else (20 if quick else None),
        sweep_repeats=args.sweep_repeats, sweep_timeout_s=args.sweep_timeout, keep_sweeps=args.keep_sweeps)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return run(args, argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    status = 0
    for device in devices:
        s = settings_for(device, args)
        path = args.out / file_name(device)
        kept = old_sections(path)
        sections: dict[str, list[str]] = {}
        stop = None
        for key in SECTIONS:
            if key not in args.only:
                continue
            if stop:
                sections[key] = [f"Not measured: {stop}."]
                continue
            print(f"== {device}: {SECTIONS[key]}", flush=True)
            lines: list[str] = []
            try:
                SECTION_FNS[key](lines, s)
            except (Interrupted, KeyboardInterrupt) as error:
                stop = f"the run was interrupted ({error or 'Ctrl-C'})"
                lines += ["", f"**Interrupted** ({error or 'Ctrl-C'}): the rows above are all this run "
                          "measured."]
                status = 1
            except Exception as error:  # a failing section must not lose the others
                traceback.print_exc()
                lines += ["", f"**Failed**: {type(error).__name__}: {error}"]
                status = 1
            sections[key] = lines
        lines = header(device, argv)
        for key, title in SECTIONS.items():
            body = sections.get(key) or kept.get(key) or ["Not measured in this run."]
            lines += ["", f"## {title}", "", *body]
        write_atomic(path, "\n".join(lines) + "\n")
        print(f"wrote {path}", flush=True)
        if stop:
            break
    return status


if __name__ == "__main__":
    raise SystemExit(main())
