"""scripts/reproduce.py itself: a smoke run writes a report with a row per claim and its figures.

Every preset's smoke run is in tests/test_presets_*.py; this checks the script's own path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_smoke_reproduction_writes_the_report(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "TESTBED_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), "--smoke", "--only",
                           "interpolation", "backward_cost", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = (tmp_path / "REPORT.md").read_text()
    assert "SMOKE size" in report
    rows = [line for line in report.splitlines()  # claim rows: 7 cells (the time table has 2)
            if line.startswith(("| interpolation", "| backward_cost")) and line.count(" | ") >= 6]
    assert len(rows) >= 2 and all("**PASS**" in r or "**FAIL**" in r for r in rows)
    for name in ("interpolation", "backward_cost"):
        figures = [line.split("(figures/")[1].rstrip(")") for line in report.splitlines()
                   if line.startswith(f"![{name}]")]
        assert figures and all((tmp_path / "figures" / f).exists() for f in figures)
