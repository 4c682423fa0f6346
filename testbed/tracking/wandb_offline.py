"""Read offline W&B runs back without a server (no `wandb.Api()`).

A run's `run-<id>.wandb` file is a LevelDB-style log, written by wandb-core
(checked against wandb 0.31.0, which has no Python reader any more):

- file header, 7 bytes: b":W&B", magic 0xBEE1 (uint16 LE), version 0 (uint8);
- then 32 KiB blocks (the file header counts towards the first block); each
  chunk has a 7-byte header: crc32 (uint32 LE, zlib.crc32 over the type byte
  then the data), data length (uint16 LE), type (1 full, 2 first, 3 middle,
  4 last); a block tail shorter than 7 bytes is zero padding;
- a record (one or more chunks) is a `wandb_internal_pb2.Record`.

History rows are `Record.history` messages: items with `key` (or `nested_key`)
and the value as JSON text in `value_json` (or, with the "typed" history
encoding, in the `value` oneof). The config is the run record's config plus any
later `Record.config` updates. The format is internal: wandb is pinned, and
tests/test_wandb.py checks this reader against `wandb leet inspect --json`.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_FILE_HEADER = struct.Struct("<4sHB")
_FILE_IDENT = b":W&B"
_FILE_MAGIC = 0xBEE1
_FILE_VERSION = 0
_BLOCK_LEN = 32 * 1024
_CHUNK_HEADER = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def find_offline_runs(root: str | Path) -> list[Path]:
    """The `offline-run-*` folders under `root` that hold a record file, sorted by path
    (start time to the second, then run id).

    Folders without a `run-*.wandb` file are left out: wandb 0.31 creates one even
    for an init that then hands back the previous, unfinished run.
    """
    return sorted(
        path for path in Path(root).rglob("offline-run-*") if path.is_dir() and any(path.glob("run-*.wandb"))
    )


def run_file(run: str | Path) -> Path:
    """The `.wandb` record file of a run folder (or the file itself)."""
    path = Path(run)
    if path.is_file():
        return path
    candidates = sorted(path.glob("run-*.wandb"))
    if len(candidates) != 1:
        raise FileNotFoundError(f"expected one run-*.wandb file in {path}, found {len(candidates)}")
    return candidates[0]


def iter_records(run: str | Path) -> Iterator[Any]:
    """Every `wandb_internal_pb2.Record` in the run's record file, in write order.

    Stops quietly at a truncated tail (a run still writing, or killed); raises
    ValueError on a bad header or checksum.
    """
    from wandb.proto import wandb_internal_pb2

    for payload in _iter_payloads(run_file(run).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _iter_payloads(data: bytes, *, tail_start: int | None = None) -> Iterator[bytes]:
    """Record payloads in `data`, the whole file; or, with `tail_start` (a block boundary),
    `data` holds the file from that byte on and records cut off at its front are skipped."""
    if tail_start is None:
        if len(data) < _FILE_HEADER.size:
            raise ValueError("not a W&B record file: too short")
        ident, magic, version = _FILE_HEADER.unpack_from(data, 0)
        if ident != _FILE_IDENT or magic != _FILE_MAGIC or version != _FILE_VERSION:
            raise ValueError(f"not a W&B record file (header {ident!r}, magic {magic:#x}, version {version})")
        offset = _FILE_HEADER.size
    else:
        offset = _FILE_HEADER.size if tail_start == 0 else 0

    pending: list[bytes] | None = None  # chunks of a record split across blocks
    while True:
        left_in_block = _BLOCK_LEN - offset % _BLOCK_LEN  # data starts on a block boundary
        if left_in_block < _CHUNK_HEADER.size:
            offset += left_in_block  # zero padding at the end of a block
            continue
        if offset + _CHUNK_HEADER.size > len(data):
            return
        checksum, length, chunk_type = _CHUNK_HEADER.unpack_from(data, offset)
        start = offset + _CHUNK_HEADER.size
        if chunk_type == 0 and length == 0 and checksum == 0:
            offset += left_in_block  # unwritten rest of a block
            continue
        if start + length > len(data):
            return  # truncated: the run is still writing, or was killed
        chunk = data[start : start + length]
        if zlib.crc32(chunk, zlib.crc32(bytes([chunk_type]))) & 0xFFFFFFFF != checksum:
            raise ValueError(f"checksum mismatch in W&B record file at byte {offset}")
        offset = start + length

        if chunk_type == _FULL:
            pending = None
            yield chunk
        elif chunk_type == _FIRST:
            pending = [chunk]
        elif chunk_type in (_MIDDLE, _LAST) and pending is None and tail_start is not None:
            continue  # the rest of a record that began before the tail
        elif chunk_type == _MIDDLE and pending is not None:
            pending.append(chunk)
        elif chunk_type == _LAST and pending is not None:
            pending.append(chunk)
            yield b"".join(pending)
            pending = None
        else:
            raise ValueError(f"unexpected chunk type {chunk_type} at byte {offset}")


def has_exit_record(run: str | Path) -> bool:
    """Whether the run's record file is complete: W&B writes the exit record last.

    Reads only the last two blocks. wandb 0.31's `run.finish()` returns before
    wandb-core has closed (flushed) the file, so a reader right after `finish`
    can see a partial file; `WandbLogger.finish` waits for this to be True.
    """
    from wandb.proto import wandb_internal_pb2

    path = run_file(run)
    size = path.stat().st_size
    tail_start = max(0, (size - 1) // _BLOCK_LEN - 1) * _BLOCK_LEN
    with path.open("rb") as stream:
        stream.seek(tail_start)
        tail = stream.read()
    for payload in _iter_payloads(tail, tail_start=tail_start):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "exit":
            return True
    return False


def _item_value(item: Any) -> Any:
    if item.value_json:
        return json.loads(item.value_json)  # accepts NaN / Infinity / -Infinity
    which = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if which is None or which == "none":
        return None
    if which == "json":
        return json.loads(item.json)
    return getattr(item, which)


def _set_item(target: dict[str, Any], item: Any, value: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def read_history(run: str | Path, *, internal: bool = False) -> list[dict[str, Any]]:
    """The logged rows in order, each {key: value} as passed to `log` (our `step` included).

    W&B's own keys (`_step`, `_runtime`, `_timestamp`: everything starting with
    "_") are dropped unless `internal=True`. Media (images, tables) come back as
    the JSON dict W&B stored for them (`{"_type": "image-file", "path": ...}`).
    """
    rows = []
    for record in iter_records(run):
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            _set_item(row, item, _item_value(item))
        if not internal:
            row = {key: value for key, value in row.items() if not key.startswith("_")}
        rows.append(row)
    return rows


def read_config(run: str | Path) -> dict[str, Any]:
    """The config the run was created with (plus later `run.config` updates), without W&B's `_wandb`."""
    config: dict[str, Any] = {}

    def apply(config_record: Any) -> None:
        for item in config_record.update:
            _set_item(config, item, json.loads(item.value_json))
        for item in config_record.remove:
            keys = list(item.nested_key) or [item.key]
            parent = config
            for key in keys[:-1]:
                parent = parent.get(key, {})
            parent.pop(keys[-1], None)

    for record in iter_records(run):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            apply(record.run.config)
        elif kind == "config":
            apply(record.config)
    return {key: value for key, value in config.items() if not key.startswith("_wandb")}
