"""Atomic, checksummed checkpoints: write to a temporary file, fsync, rename; keep the last K.

A checkpoint file holds ``{"sha256": hex, "payload": bytes}`` where ``payload`` is the ``torch.save`` of the
state (model, optimizer, scheduler, RNG states, epoch, step, config, dataset manifest, package version). A
corrupt or truncated latest checkpoint is detected by its checksum and the previous one is used, with a warning.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from dsmpnn.errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "list_checkpoints", "atomic_write_bytes"]

_NAME = re.compile(r"^ckpt_epoch_(\d{6})\.pt$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest epoch first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def save_checkpoint(directory: Path, epoch: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Save ``state`` as ``directory/ckpt_epoch_{epoch:06d}.pt`` atomically and delete all but the last ``keep``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    out = io.BytesIO()
    torch.save({"sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, out)
    path = Path(directory) / f"ckpt_epoch_{epoch:06d}.pt"
    atomic_write_bytes(path, out.getvalue())
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
        payload = outer["payload"]
        if hashlib.sha256(payload).hexdigest() != outer["sha256"]:
            raise CheckpointError(f"{path}: checksum mismatch, the file is corrupt")
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # truncated zip, unpickling error, wrong structure
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None


def load_checkpoint(directory: Path) -> tuple[dict[str, Any], Path]:
    """Load the newest readable checkpoint in ``directory``; warn about each newer one that is corrupt."""
    files = list_checkpoints(directory)
    if not files:
        raise CheckpointError(f"{directory}: no checkpoint found (expected files ckpt_epoch_NNNNNN.pt)")
    errors = []
    for path in reversed(files):
        try:
            state = _read(path)
        except CheckpointError as e:
            errors.append(str(e))
            warnings.warn(f"{e}; falling back to an older checkpoint", stacklevel=2)
            continue
        return state, path
    raise CheckpointError(f"{directory}: every checkpoint is unreadable: " + "; ".join(errors))
