"""scripts/bench.py runs and writes its file: sections, parsable ratios (no timing assertions).

The sweep section launches two Hydra multiruns of 36 points (~30 s even at 2 steps): slow-marked.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "scripts" / "bench.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_script", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run_bench(out: Path, *args: str) -> Path:
    proc = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--out", str(out), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    files = list(out.glob("cpu-*threads.md"))
    assert len(files) == 1, files
    return files[0]


def table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the tables of one "## " section."""
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ") and not line.startswith("|---")]


def number(cell: str) -> float:
    return float(re.sub(r"[*x]", "", cell))


def test_quick_bench_writes_every_section_with_positive_ratios(tmp_path: Path) -> None:
    path = run_bench(tmp_path, "--quick", "--no-sweep", "--ks", "1,4", "--repeats", "1", "--budget", "0.01")
    text = path.read_text()
    bench = load_bench()
    assert text.startswith("# Benchmark: ") and "torch CPU threads: " in text
    for title in bench.SECTIONS.values():
        assert f"\n## {title}\n" in text
    rows = table(text, bench.SECTIONS["step"])
    head, rows = rows[0], rows[1:]
    ratio = head.index("manual/autograd")
    assert {r[head.index("threads")] for r in rows} >= {"1"}  # the one-thread rows on CPU
    assert {r[head.index("dtype")] for r in rows} == {"float32", "float64"}
    assert all(number(r[ratio]) > 0 for r in rows) and len(rows) >= 4
    assert all(number(r[head.index("unfused/autograd")]) > 0 for r in rows)
    assert "Target manual/autograd <= 1.0 at every row: " in text
    rows = table(text, bench.SECTIONS["replicas"])
    data = [r for r in rows if r[0].isdigit()]
    assert [r[0] for r in data] == ["1", "4", "1", "4"]  # two shapes
    assert all(number(r[3]) > 0 for r in data)
    assert text.count("Stacked >= the loop at every K") == 2
    assert "Not measured: CUDA graphs need a CUDA device" in text
    assert "Sweep wall time" in text and "Not measured" in text.split("## Sweep wall time", 1)[1]


def test_only_reruns_a_section_and_keeps_the_others(tmp_path: Path) -> None:
    bench = load_bench()
    path = tmp_path / bench.file_name("cpu")
    lines = ["# old", ""]
    for key, title in bench.SECTIONS.items():
        lines += [f"## {title}", "", f"old {key} body", ""]
    path.write_text("\n".join(lines))
    kept = bench.old_sections(path)
    assert kept == {key: [f"old {key} body"] for key in bench.SECTIONS}
    assert bench.main(["--device", "cpu", "--only", "graph", "--out", str(tmp_path)]) == 0
    text = next(tmp_path.glob("cpu-*threads.md")).read_text()
    assert "old step body" in text and "old sweep body" in text and "old graph body" not in text
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temp file left


def test_sweep_comparison_reads_job_counts_and_final_losses(tmp_path: Path) -> None:
    bench = load_bench()
    for name, losses in {"a": (1.0, 2.0), "b": (1.0 + 1e-12, 2.0)}.items():
        for point, loss in enumerate(losses):
            (tmp_path / name / str(point)).mkdir(parents=True)
            (tmp_path / name / str(point) / "summary.json").write_text(json.dumps(
                {"status": "completed", "final/train_loss": loss, "final/test_loss": loss, "steps": 3}))
    group = tmp_path / "a" / ".batched" / "0"
    group.mkdir(parents=True)
    group.joinpath("summary.json").write_text(json.dumps({"replicas": [{"run_dir": "0"}, {"run_dir": "1"}]}))
    assert bench.sweep_jobs(tmp_path / "a") == (1, 1, 2)
    assert bench.sweep_jobs(tmp_path / "b") == (2, 0, 2)
    difference, compared, problems = bench.compare_sweeps(tmp_path / "a", tmp_path / "b")
    assert compared == 2 and not problems and 0 < difference < 2e-12


@pytest.mark.slow
def test_bench_sweep_section_batched_equals_unbatched(tmp_path: Path) -> None:
    path = run_bench(tmp_path, "--only", "sweep", "--sweep-steps", "2")
    text = path.read_text()
    rows = table(text, "Sweep wall time, batched vs unbatched")
    assert [r[0] for r in rows[1:]] == ["basic (unbatched)", "batched"]
    assert all(number(r[3]) > 0 for r in rows[1:]) and rows[1][1] == rows[2][1] == "36"
    assert re.search(r"over 36 points: [0-9.e+-]+ \(<= 1e-10: \*\*met\*\*\)", text), text


def test_paired_ratio_takes_the_ratio_within_each_round():
    """A slow spell hitting both samples of round 2 cancels in its ratio; a ratio of the two medians
    pairs round 3's slow sample of one with fast samples of the other."""
    bench = load_bench()
    samples = {"manual": [1.0, 4.0, 4.0], "autograd": [2.0, 8.0, 2.0]}
    assert bench.paired_ratio(samples, "manual", "autograd") == (0.5, 0.5, 2.0)
    assert bench.interleaved({"f": lambda: None}, "cpu", 3, budget_s=1e-4, samples=samples)[1] == 3
    assert len(samples["f"]) == 3 and samples["manual"] == [1.0, 4.0, 4.0]


def test_interleaved_reverses_the_order_every_other_round():
    """ABBA: no function is always timed right after the same one (a cost one call leaves behind,
    such as spinning threads, would land on the same function every round)."""
    bench = load_bench()
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    bench.interleaved(fns, "cpu", 4, budget_s=0.0)  # budget 0: one call per sample
    rounds = "".join(calls[6:])  # after the warm-up call and the single timing call of each
    assert rounds == "abc" + "cba" + "abc" + "cba"
