"""Speed of the hand-written engine, measured side by side with torch autograd in one run.

    python scripts/bench.py           # CPU (and CUDA when present): writes results/bench/<device>.md
    python scripts/bench.py --quick   # fewer repeats, small shapes only

Every figure is a median over repeats after warm-up, with device synchronisation, and the
manual and autograd timings of a shape are interleaved so that machine noise hits both.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed.engine import MLP, Backend, MLPSpec, get_optimizer, init_params, init_replica_params  # noqa: E402
from testbed.reference import build_torch_loss, build_torch_mlp, build_torch_optimizer  # noqa: E402
from testbed.theory.backward_cost import mlp_flops  # noqa: E402

SHAPES = [(4, 64, 32), (8, 512, 256), (20, 1024, 512), (50, 256, 128)]
CUDA_SHAPES = SHAPES + [(8, 4096, 4096)]
IN_FEATURES, CLASSES = 64, 10


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, number: int) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(number):
        fn()
    sync(device)
    return (time.perf_counter() - start) / number


def interleaved(fns: dict, device: str, repeats: int, budget_s: float = 0.2) -> dict[str, float]:
    """Median seconds per call of each function, repeats interleaved, after one warm-up call."""
    for fn in fns.values():
        fn()
    single = max(timed(next(iter(fns.values())), device, 1), 1e-6)
    number = max(1, int(budget_s / single))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(timed(fn, device, number))
    return {k: float(np.median(v)) for k, v in samples.items()}


def build(depth: int, width: int, batch: int, dtype: str, device: str, backend: str = "torch"):
    spec = MLPSpec(IN_FEATURES, CLASSES, depth=depth, width=width, activation="relu", init="kaiming_normal")
    initial = init_params(spec, 0)
    be = Backend(backend, dtype, device if backend == "torch" else "cpu")
    net = MLP(spec, {k: be.asarray(v) for k, v in initial.items()})
    opt = get_optimizer("sgd", lr=1e-3)
    rng = np.random.default_rng(0)
    x_np, y_np = rng.normal(size=(batch, IN_FEATURES)), rng.integers(0, CLASSES, batch)
    x, y = be.asarray(x_np), be.labels(y_np)

    def manual_step():
        _, grads = net.loss_and_grads(x, y)
        opt.step(net.params, grads)

    def manual_forward():
        net.loss(x, y)

    model = build_torch_mlp(spec, initial, device=device, dtype=dtype)
    loss_fn = build_torch_loss("cross_entropy")
    torch_opt = build_torch_optimizer("sgd", model.parameters(), lr=1e-3)
    xt = torch.as_tensor(x_np).to(device, model[0].weight.dtype)
    yt = torch.as_tensor(y_np).to(device)

    def autograd_step():
        torch_opt.zero_grad(set_to_none=True)
        loss_fn(model(xt), yt).backward()
        torch_opt.step()

    return spec, manual_step, manual_forward, autograd_step


def matmul_flops_per_s(width: int, batch: int, dtype: str, device: str, repeats: int) -> float:
    a = torch.randn(batch, width, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(width, width, device=device, dtype=getattr(torch, dtype))
    seconds = interleaved({"mm": lambda: a @ b}, device, repeats)["mm"]
    return 2 * batch * width * width / seconds


def step_table(device: str, dtypes: list[str], shapes: list, repeats: int) -> list[str]:
    rows = ["| depth/width/batch | dtype | manual step ms | autograd step ms | manual/autograd | "
            "(fwd+bwd)/fwd time | FLOP ratio (fwd+bwd)/fwd | manual GFLOP/s | matmul GFLOP/s | "
            "numpy manual step ms | numpy/torch-manual |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for depth, width, batch in shapes:
        for dtype in dtypes:
            label = dtype
            if dtype.startswith("float32-tf32"):
                torch.backends.cuda.matmul.allow_tf32 = dtype.endswith("on")
                dtype = "float32"
            spec, manual_step, manual_forward, autograd_step = build(depth, width, batch, dtype, device)
            fns = {"manual": manual_step, "autograd": autograd_step, "forward": manual_forward}
            numpy_ms = ""
            ratio_np = ""
            t = interleaved(fns, device, repeats)
            if device == "cpu":
                # timed on its own: numpy's BLAS threads, still spinning after a numpy call, slow
                # the torch call that follows (interleaved, the torch step measured 2x slower)
                numpy_step = build(depth, width, batch, dtype, "cpu", backend="numpy")[1]
                t["numpy"] = interleaved({"numpy": numpy_step}, device, repeats)["numpy"]
                numpy_ms = f"{t['numpy'] * 1e3:.3f}"
                ratio_np = f"{t['numpy'] / t['manual']:.2f}"
            flops = mlp_flops(batch, spec.layer_sizes)
            mm = matmul_flops_per_s(width, batch, dtype, device, max(3, repeats // 2))
            achieved = (flops.forward + flops.backward) / t["manual"]
            rows.append(
                f"| {depth}/{width}/{batch} | {label} | {t['manual'] * 1e3:.3f} | "
                f"{t['autograd'] * 1e3:.3f} | "
                f"**{t['manual'] / t['autograd']:.2f}** | {t['manual'] / t['forward']:.2f} | "
                f"{(flops.forward + flops.backward) / flops.forward:.2f} | {achieved / 1e9:.1f} | "
                f"{mm / 1e9:.1f} | {numpy_ms} | {ratio_np} |")
            print(rows[-1], flush=True)
    return rows


def replica_steps(k: int, depth: int, width: int, batch: int, device: str):
    """A step of K stacked replicas, and a step of a loop over min(K, 16) autograd models."""
    spec = MLPSpec(IN_FEATURES, CLASSES, depth=depth, width=width, activation="relu",
                   init="kaiming_normal")
    be = Backend("torch", "float32", device)
    stacked = MLP(spec, {n: be.asarray(v) for n, v in init_replica_params(spec, list(range(k))).items()})
    opt = get_optimizer("sgd", lr=1e-3)
    rng = np.random.default_rng(0)
    x = be.asarray(rng.normal(size=(k, batch, IN_FEATURES)))
    y = be.labels(rng.integers(0, CLASSES, (k, batch)))

    def stacked_step():
        _, grads = stacked.loss_and_grads(x, y)
        opt.step(stacked.params, grads)

    loop = [build(depth, width, batch, "float32", device)[3] for _ in range(min(k, 16))]

    def loop_step():  # up to 16 models, scaled: the loop's cost is linear in K
        for step in loop:
            step()

    return stacked_step, loop, loop_step


def replica_table(device: str, shape: tuple, ks: list[int], repeats: int) -> list[str]:
    """Replica-steps/s: K replicas stacked in batched matmuls vs a loop of K autograd models."""
    depth, width, batch = shape
    rows = [f"Shape depth {depth}, width {width}, batch {batch}, float32, SGD.", "",
            "| K | stacked manual replica-steps/s | autograd loop replica-steps/s | speed-up |",
            "|---|---|---|---|"]
    for k in ks:
        stacked_step, loop, loop_step = replica_steps(k, depth, width, batch, device)
        t = interleaved({"stacked": stacked_step, "loop": loop_step}, device, repeats)
        stacked_rate, loop_rate = k / t["stacked"], len(loop) / t["loop"]
        rows.append(f"| {k} | {stacked_rate:.0f} | {loop_rate:.0f} | **{stacked_rate / loop_rate:.1f}x** |")
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: both if CUDA")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small shapes, 3 repeats (a smoke run)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args()
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    repeats = 3 if args.quick else args.repeats
    for device in devices:
        if device == "cuda":
            name = torch.cuda.get_device_name().replace(" ", "_")
            shapes, dtypes = CUDA_SHAPES, ["float32-tf32-on", "float32-tf32-off", "float64"]
            replica_shape, ks = (20, 256, 128), [1, 16, 64, 256]
        else:
            name = f"cpu-{torch.get_num_threads()}threads"
            shapes, dtypes = SHAPES, ["float32", "float64"]
            replica_shape, ks = (4, 64, 32), [1, 16, 64, 256]
        if args.quick:
            shapes, ks = shapes[:1], ks[:2]
        card = (torch.cuda.get_device_name() if device == "cuda"
                else platform.processor() or platform.machine())
        lines = [f"# Benchmark: {card} ({device})", "",
                 f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
                 f"medians of {repeats} interleaved repeats after warm-up. "
                 "Generated by `python scripts/bench.py`.", "",
                 "## One training step (forward, backward, SGD update), manual engine vs torch autograd", ""]
        lines += step_table(device, dtypes, shapes, repeats)
        lines += ["", "## Replicas: K independent models of one shape in one program", ""]
        lines += replica_table(device, replica_shape, ks, repeats)
        lines += ["", "## Sweep wall time, batched vs unbatched", "",
                  "Not measured: the batching sweeper (`hydra/sweeper=batched`) is not built yet.", ""]
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{name}.md"
        path.write_text("\n".join(lines))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
