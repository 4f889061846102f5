"""Every file the engine writes or reads: atomic writes, JSON, safetensors with JSON metadata.

Nothing here unpickles: tensors travel in safetensors, structure in JSON, so a run folder is safe to open.
A write goes to a temporary file in the same folder, is flushed and fsynced, then renamed over the target:
a crash leaves either the old file or the new one, never half of either. A write that fails (a full or read-only
disk) removes its temporary file and raises :class:`~haba_core.errors.DiskError`, which says what happened and
what to do; the file it would have replaced is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from haba_core.errors import CheckpointError, DiskError

FORMAT_VERSION = "1"

# what a write meets on a real machine, in words (other OSErrors are bugs or races and pass unchanged)
DISK_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission is denied",
    errno.EPERM: "permission is denied",
}


def disk_error(e: OSError, path: str | Path) -> DiskError:
    """The :class:`DiskError` for ``e`` met while writing ``path``: what happened, where, and what to do."""
    path = Path(path)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = (
            f"{free_bytes(path) / 2**20:.1f} MB are free there. Free space on that disk (old runs' snapshots/ "
            "folders are the largest files) or write to another disk"
        )
    elif e.errno == errno.EROFS:
        fix = "Write to a folder on a writable disk (haba distill --run-dir, or HABA_RUNS_DIR for the app)"
    else:
        fix = "Write to a folder you may write to, or fix the folder's permissions"
    err = DiskError(
        f"Cannot write {path}: {DISK_ERRNOS[e.errno]} ({e.strerror}). {fix}; files written before are unchanged."
    )
    err.errno = e.errno
    return err


def free_bytes(path: str | Path) -> int:
    """Free bytes on the disk holding ``path`` (its nearest existing folder); 0 when that cannot be told."""
    for folder in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return 0


@contextlib.contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Inside: a full, read-only or unwritable disk met while writing ``path`` raises :class:`DiskError`."""
    try:
        yield
    except DiskError:
        raise
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        raise disk_error(e, path) from e


def ensure_writable_dir(folder: str | Path, probe_bytes: int = 4096) -> Path:
    """Create ``folder`` (with its parents) and prove that a small file can be written there (then removed), so a
    read-only or full disk fails at launch with a :class:`DiskError`, not at the first snapshot."""
    folder = Path(folder)
    with disk_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / ".write_check", b"\0" * probe_bytes)
        (folder / ".write_check").unlink()
    return folder


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def read_json_strict(path: str | Path) -> Any:
    """The JSON in ``path``; a missing file raises FileNotFoundError, a corrupted one :class:`CheckpointError`. Run
    folders' files, which the app reads while they are written, go through ``haba_core.runfolder.read_json``."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is corrupted.") from e


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line and flush it (readers skip a torn last line)."""
    with disk_errors(path), open(path, "a") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")
        f.flush()


def read_jsonl_strict(path: str | Path) -> list[dict]:
    """Read a JSON-lines file, skipping a torn (partially written) last line; a missing file is [], an unreadable
    one raises (the tolerant reader of a run folder's files is ``haba_core.runfolder.read_jsonl``)."""
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_jsonl(path: str | Path, keep: Any) -> None:
    """Atomically rewrite a JSON-lines file keeping only records for which ``keep(record)`` is true."""
    records = [r for r in read_jsonl_strict(path) if keep(r)]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Atomically save tensors with JSON-serializable metadata (stored under the ``haba`` key)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    data = st_save(tensors, metadata={"haba": json.dumps(meta, default=_json_default)})
    atomic_write_bytes(path, data)


def load_tensors(path: str | Path, expect_format: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a file written by :func:`save_tensors`; checks the ``format`` field when asked."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist.")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get("haba", "null"))
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it is corrupted or foreign.") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is a safetensors file but not one written by haba_core (no metadata).")
    if expect_format is not None and meta.get("format") != expect_format:
        raise CheckpointError(f"{path} holds {meta.get('format')!r}, not a {expect_format!r}; pass the right file.")
    return tensors, meta


def flatten_state(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts/lists/tensors/scalars) into a JSON skeleton and a flat tensor dict."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(o: Any, key: str) -> Any:
        if isinstance(o, torch.Tensor):
            tensors[key] = o
            return {"__tensor__": key}
        if isinstance(o, Mapping):
            # JSON keys are strings: remember int keys (optimizer state uses them)
            return {"__dict__": [[k, walk(v, f"{key}.{k}")] for k, v in o.items()]}
        if isinstance(o, (list, tuple)):
            return {"__list__": [walk(v, f"{key}.{i}") for i, v in enumerate(o)], "tuple": isinstance(o, tuple)}
        return o

    return walk(obj, prefix or "s"), tensors


def unflatten_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    def walk(o: Any) -> Any:
        if isinstance(o, dict):
            if "__tensor__" in o:
                return tensors[o["__tensor__"]]
            if "__dict__" in o:
                return {k: walk(v) for k, v in o["__dict__"]}
            if "__list__" in o:
                items = [walk(v) for v in o["__list__"]]
                return tuple(items) if o.get("tuple") else items
        return o

    return walk(skeleton)


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")
