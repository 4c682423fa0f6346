"""Plain-file outputs of a run, written so that a reader never sees half a file.

Whole files (config.yaml, summary.json, checkpoints) go to a temporary name in
the same folder and are renamed into place (``os.replace`` is atomic on
POSIX). ``metrics.jsonl`` grows one complete line per write.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _json_safe(value: Any) -> Any:
    """NaN and inf become the strings "nan", "inf", "-inf": strict JSON, and still readable."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def to_json(obj: Any, **kwargs) -> str:
    return json.dumps(_json_safe(obj), allow_nan=False, **kwargs)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


class MetricsFile:
    """``metrics.jsonl``: one JSON object per logged step, each written whole and flushed.

    ``resume_at`` reopens an existing file and cuts it back to that many bytes (the length it
    had at a checkpoint), dropping whatever a killed run wrote after it, a partial last line
    included. ``size`` is the file's length in bytes after the last write.
    """

    def __init__(self, path: str | Path, append: bool = False, resume_at: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_at is not None:
            self._handle = open(self.path, "r+b")  # noqa: SIM115
            self._handle.truncate(resume_at)
            self._handle.seek(resume_at)
        else:
            self._handle = open(self.path, "ab" if append else "wb")  # noqa: SIM115
        self.size = self._handle.tell()

    def write(self, row: dict) -> None:
        self._handle.write((to_json(row) + "\n").encode())
        self._handle.flush()
        self.size = self._handle.tell()

    def close(self) -> None:
        self._handle.close()


NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def read_metrics(path: str | Path, numbers: bool = False) -> list[dict]:
    """The rows of a metrics.jsonl; a last line cut short by a kill is ignored.

    ``numbers=True`` turns the strings "nan", "inf", "-inf" back into floats.
    """
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if numbers:
            row = {k: NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()}
        rows.append(row)
    return rows
