"""Print the equivalence suite's measured errors as a markdown table.

Runs the comparisons of tests/test_ops.py, test_finite_differences.py, test_networks.py and
test_trajectories.py programmatically (the same functions, from tests/helpers.py) and prints, per
suite, device and dtype, the largest relative error measured and the tolerance the tests hold it
to. Usage: ``.venv/bin/python scripts/equivalence_table.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import helpers  # noqa: E402
from helpers import (  # noqa: E402
    DEVICES,
    FINITE_DIFFERENCE_TOL,
    NETWORK_TOL,
    OP_TOL,
    OPS,
    TRAJECTORIES,
    TRAJECTORY_TOL,
    backends,
    compare_network,
    compare_op,
    finite_difference_errors,
    network_finite_difference_errors,
    op_case_kwargs,
    oracle_errors,
    run_trajectory,
)

from testbed.engine import ACTIVATIONS, LOSSES, WEIGHT_INITS, MLPSpec  # noqa: E402

ACTIVATION_NAMES = [*ACTIVATIONS, "gelu_tanh"]
ACTIVATION_PARAMS = {"leaky_relu": {"slope": 0.2}, "elu": {"alpha": 0.7},
                     "softplus": {"beta": 2.0, "threshold": 3.0}}
BIAS_INIT = {1: dict(bias_init="zeros"), 3: dict(bias_init="normal", bias_std=0.3),
             8: dict(bias_init="standard")}


class Table:
    """The largest error and the number of comparisons per (suite, device, dtype)."""

    def __init__(self):
        self.worst: dict[tuple[str, str, str], float] = defaultdict(float)
        self.count: dict[tuple[str, str, str], int] = defaultdict(int)
        self.tolerance: dict[tuple[str, str], str] = {}

    def add(self, suite: str, device: str, dtype: str, errors, tolerance: str) -> None:
        errors = list(errors)
        self.worst[suite, device, dtype] = max(self.worst[suite, device, dtype], *errors)
        self.count[suite, device, dtype] += len(errors)
        self.tolerance[suite, dtype] = tolerance

    def markdown(self, suites: list[str]) -> str:
        lines = ["| suite | device | float64: max rel. error (tol) | float32: max rel. error (tol) "
                 "| comparisons |",
                 "|---|---|---|---|---|"]
        for suite in suites:
            for device in DEVICES:
                cells, total = [], 0
                for dtype in ("float64", "float32"):
                    key = (suite, device, dtype)
                    if key in self.count:
                        cells.append(f"{self.worst[key]:.1e} ({self.tolerance[suite, dtype]})")
                        total += self.count[key]
                    else:
                        cells.append("-")
                if total:
                    lines.append(f"| {suite} | {device} | {cells[0]} | {cells[1]} | {total} |")
        return "\n".join(lines)


def ops(table: Table) -> None:
    for backend in backends():
        for case in OPS:
            for extreme in (False, True):
                errors = compare_op(case.shapes, case.torch_fn, case.op, backend,
                                    **op_case_kwargs(case, extreme))
                tol = f"{OP_TOL[backend.dtype]:g}"
                table.add("ops forward", backend.device, backend.dtype, [errors["forward"]], tol)
                table.add("ops backward", backend.device, backend.dtype, [errors["backward"]], tol)


def finite_differences(table: Table) -> None:
    tol = f"{FINITE_DIFFERENCE_TOL:g}"
    for case in OPS:
        table.add("finite differences: ops", "cpu", "float64", finite_difference_errors(case), tol)
    for activation in ACTIVATION_NAMES:
        for loss in LOSSES:
            spec = MLPSpec(in_features=4, out_features=3, depth=2, width=6, activation=activation,
                           activation_params=ACTIVATION_PARAMS.get(activation, {}),
                           init="xavier_normal", bias_init="standard", loss=loss)
            errors = network_finite_difference_errors(spec).values()
            table.add("finite differences: networks", "cpu", "float64", errors, tol)


def networks(table: Table) -> None:
    """The test_networks grid, in float64 (as tested) and float32 (for information: float32
    comparisons are held to 1e-5 x the tensor's condition number, see test_properties)."""
    for backend in backends():
        tol = f"{NETWORK_TOL[backend.dtype]:g}" if backend.dtype == "float64" else "1e-05 x kappa"
        for activation in ACTIVATION_NAMES:
            for loss in LOSSES:
                for init in WEIGHT_INITS:
                    for depth in (1, 3, 8):
                        spec = MLPSpec(in_features=4, out_features=3, depth=depth, width=7,
                                       activation=activation, init=init, loss=loss,
                                       activation_params=ACTIVATION_PARAMS.get(activation, {}),
                                       **BIAS_INIT[depth])
                        errors = compare_network(spec, backend).values()
                        table.add("networks", backend.device, backend.dtype, errors, tol)


class Oracle:
    """Each side's gradient error against the exact one (the engine in np.longdouble), in units of
    its rounding-error bound (testbed.reference.discrepancy): the largest, and which side is closer
    to the truth how often."""

    def __init__(self):
        self.worst: dict[tuple[str, str], float] = defaultdict(float)
        self.closer: dict[tuple[str, str, str], int] = defaultdict(int)

    def add(self, backend, spec: MLPSpec) -> None:
        for engine, reference, bound in oracle_errors(spec, backend).values():
            if bound == 0:  # nothing entered this gradient (dead units): exactly 0 on every side
                continue
            side = f"engine ({backend.name} backend)"
            self.worst[side, backend.dtype] = max(self.worst[side, backend.dtype], engine / bound)
            self.worst["torch", backend.dtype] = max(self.worst["torch", backend.dtype], reference / bound)
            winner = "engine" if engine < reference else "torch" if reference < engine else "tie"
            self.closer[backend.name, backend.dtype, winner] += 1

    def markdown(self) -> str:
        lines = ["| side | float64: max error / bound | float32: max error / bound |", "|---|---|---|"]
        for side in sorted({side for side, _ in self.worst}):
            worst = [f"{self.worst[side, dtype]:.2g}" for dtype in ("float64", "float32")]
            lines.append(f"| {side} | {worst[0]} | {worst[1]} |")
        lines.append("")
        for name in ("numpy", "torch"):
            for dtype in ("float64", "float32"):
                won, tie, lost = (self.closer[name, dtype, winner] for winner in ("engine", "tie", "torch"))
                lines.append(f"- {name} backend, {dtype}: of {won + tie + lost} parameter gradients the "
                             f"engine's is closer to the exact one for {won}, torch's for {lost}, "
                             f"equally close for {tie}")
        return "\n".join(lines)


def oracle(found: Oracle) -> None:
    """The test_networks grid (cpu; activations scipy can evaluate in longdouble), each side against
    the exact gradient."""
    for backend in backends(devices=["cpu"]):
        for activation in ACTIVATION_NAMES:
            if activation == "gelu":  # scipy's erf has no longdouble loop
                continue
            for loss in LOSSES:
                for init in WEIGHT_INITS:
                    for depth in (1, 3, 8):
                        found.add(backend, MLPSpec(in_features=4, out_features=3, depth=depth, width=7,
                                                   activation=activation, init=init, loss=loss,
                                                   activation_params=ACTIVATION_PARAMS.get(activation, {}),
                                                   **BIAS_INIT[depth]))


def trajectories(table: Table) -> None:
    for backend in backends(dtypes=("float64",)) + backends(names=("torch",), dtypes=("float32",)):
        for case in TRAJECTORIES:
            result = run_trajectory(case, backend)
            table.add("trajectories (100 steps)", backend.device, backend.dtype,
                      [result.param_rel_err], f"{TRAJECTORY_TOL[backend.dtype]:g}")


def main() -> None:
    # one thread: the tensors are tiny, and OpenMP/OpenBLAS threads spin-waiting for a core on a
    # busy machine make such code many times slower, not faster
    helpers.torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(1)
    start = time.perf_counter()
    table = Table()
    suites = [("ops", ops), ("finite differences", finite_differences), ("networks", networks),
              ("trajectories", trajectories)]
    for name, run in suites:
        began = time.perf_counter()
        run(table)
        print(f"{name}: {time.perf_counter() - began:.1f} s", file=sys.stderr)
    began = time.perf_counter()
    found = Oracle()
    oracle(found)
    print(f"oracle: {time.perf_counter() - began:.1f} s", file=sys.stderr)
    print(table.markdown(["ops forward", "ops backward", "finite differences: ops",
                          "finite differences: networks", "networks", "trajectories (100 steps)"]))
    print("\n**Against the exact gradient** (the engine in np.longdouble, 64-bit significand), each "
          "side's error in units of its rounding-error bound (`testbed.reference.discrepancy`; <= 1 "
          "for a correct implementation), over the networks grid on cpu without exact GELU:\n")
    print(found.markdown())
    print(f"\nrelative error = ||a - b|| / max(||b||, tiny) per tensor; numpy and torch backends "
          f"pooled; {time.perf_counter() - start:.0f} s; torch {helpers.torch.__version__}.")


if __name__ == "__main__":
    main()
