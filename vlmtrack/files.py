"""Files every part writes the same way: whole or not at all (write to a temporary name, then rename),
so a process killed mid-write never leaves a half-written split, golden set, metrics or record file."""
from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, doc) -> None:
    write_atomic(path, json.dumps(doc, indent=1))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock between processes on one host, held on `path` (created if missing). The kernel
    releases it when its holder dies, so a worker killed inside never leaves the others waiting."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
