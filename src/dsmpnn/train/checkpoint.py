"""Atomic, checksummed checkpoints: write to a temporary file, fsync, rename; keep the last K.

A checkpoint file holds ``{"sha256": hex, "payload": bytes}`` where ``payload`` is the ``torch.save`` of the
state. The trainer stores ``model``, ``optimizer``, ``scheduler`` (state dicts), ``rng`` (:func:`rng_state`: the
torch, numpy and Python generators), ``epoch`` (epochs done), ``batch`` and ``partial`` (position and loss sums
inside an interrupted epoch), ``step`` (optimizer steps taken) and ``config``; :func:`save_checkpoint` adds
``version`` (``dsmpnn.__version__``). A corrupt or truncated latest checkpoint is detected by its checksum and the
previous one is used, with a warning; a checkpoint of another major version, or one whose state does not fit the
model (:func:`load_state`), is refused with a :class:`~dsmpnn.errors.CheckpointError`.

Names: ``ckpt_epoch_{E:06d}.pt`` after E epochs; ``ckpt_epoch_{E:06d}_graphs_{G:06d}.pt`` after E epochs and G
graphs of epoch E + 1 (written when a run is interrupted inside an epoch). :func:`list_checkpoints` orders them by
(E, G). Retention counts only checkpoints whose checksum verifies: a corrupt or foreign file with a checkpoint's
name is neither counted nor deleted (a warning names it), so it can never push a valid checkpoint out.

RNG states and ranks: the Nyström samples and their order come from ``numpy.random.default_rng((seed, epoch))``,
not from a global generator, so a resumed run draws exactly what an uninterrupted one would without them. The
global generators are saved and restored anyway (for models or options that draw from them). In a run on P ranks
every rank seeds them identically and makes the same draws, so rank 0's states, which it saves, are every rank's.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dsmpnn
from dsmpnn.data.paths import created_mode
from dsmpnn.errors import CheckpointError, WriteError

__all__ = ["save_checkpoint", "load_checkpoint", "list_checkpoints", "checkpoint_name", "atomic_write_bytes",
           "write_error", "load_state", "rng_state", "set_rng_state"]

_NAME = re.compile(r"^ckpt_epoch_(\d{6,})(?:_graphs_(\d{6,}))?\.pt$")
_TEMP = re.compile(r"^\.ckpt_epoch_\d{6,}(?:_graphs_\d{6,})?\.pt\.")  # left by a process killed while writing


_FILE_MODE = created_mode(0o666)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the complete new one.

    A failed write (disk full, quota, read-only file system...) leaves the old file and no temporary file, and
    raises :class:`~dsmpnn.errors.WriteError` naming ``path`` and the system's reason."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _FILE_MODE)  # what open() would give, not mkstemp's 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(path, e) from None
        raise


def write_error(path: Path, e: OSError) -> WriteError:
    """``e`` (from writing ``path``) as a one-line :class:`WriteError` naming ``path`` (keeping its errno)."""
    code = errno.errorcode.get(e.errno, "") if e.errno is not None else ""
    reason = f"{e.strerror or e} ({code})" if code else str(e.strerror or e)
    err = WriteError(f"{path}: cannot write the file: {reason}; the previous version, if any, is unchanged")
    err.errno = e.errno
    return err


def checkpoint_name(epoch: int, graphs: int = 0) -> str:
    """File name of the checkpoint after ``epoch`` epochs and ``graphs`` graphs of the next one."""
    return f"ckpt_epoch_{epoch:06d}" + (f"_graphs_{graphs:06d}" if graphs else "") + ".pt"


def _order(path: Path) -> tuple[int, int]:
    epoch, graphs = _NAME.match(path.name).groups()
    return int(epoch), int(graphs or 0)


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first (by epochs, then graphs of an interrupted epoch)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _NAME.match(p.name)), key=_order)


def save_checkpoint(directory: Path, epoch: int, state: dict[str, Any], keep: int = 3, graphs: int = 0) -> Path:
    """Save ``state`` (plus ``version``, the package version) atomically as ``directory/`` :func:`checkpoint_name`
    (``epoch``, ``graphs``); then keep it and the newest ``keep`` verified checkpoints, delete the other verified
    ones, and remove temporary files that a killed writer left behind. A file that does not verify is left alone
    and not counted (with a warning): it may be a damaged or foreign file, not ours to delete."""
    buf = io.BytesIO()
    torch.save({**state, "version": dsmpnn.__version__}, buf)
    payload = buf.getvalue()
    out = io.BytesIO()
    torch.save({"sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, out)
    path = Path(directory) / checkpoint_name(epoch, graphs)
    atomic_write_bytes(path, out.getvalue())
    _prune(Path(directory), path, keep)
    for tmp in Path(directory).iterdir():
        if _TEMP.match(tmp.name):
            tmp.unlink(missing_ok=True)
    return path


def _prune(directory: Path, written: Path, keep: int) -> None:
    """Delete the verified checkpoints other than ``written`` and the ``keep`` newest verified ones."""
    kept = 0
    for old in reversed(list_checkpoints(directory)):
        if old == written:
            kept += 1
        elif not _verifies(old):
            warnings.warn(f"{old}: not a valid checkpoint (checksum or format), so it is neither counted nor "
                          "deleted by train.keep_checkpoints; move it away if it is not yours", stacklevel=3)
        elif kept < keep:
            kept += 1
        else:
            old.unlink(missing_ok=True)


def _verifies(path: Path) -> bool:
    """Whether ``path`` is a checkpoint whose payload matches its checksum."""
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
        return hashlib.sha256(outer["payload"]).hexdigest() == outer["sha256"]
    except Exception:  # truncated zip, unpickling error, wrong structure
        return False


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
        _check_version(state, path)
        return state, path
    raise CheckpointError(f"{directory}: every checkpoint is unreadable: " + "; ".join(errors))


def _major(version: str) -> str:
    return str(version).split(".")[0]


def _check_version(state: Any, path: Path) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, expected a dict of training state")
    version = state.get("version")  # absent in checkpoints of early 0.1 development versions
    if version is not None and _major(version) != _major(dsmpnn.__version__):
        raise CheckpointError(f"{path}: written by dsmpnn {version}, this is dsmpnn {dsmpnn.__version__}; a "
                              f"checkpoint is read by the same major version only (use dsmpnn {_major(version)}.x "
                              "for this run, or train again)")


def load_state(target: Any, state: dict[str, Any], key: str, path: Path, against: str) -> None:
    """``target.load_state_dict(state[key])`` (a model, optimizer or scheduler); a :class:`CheckpointError` naming
    the checkpoint ``path``, the part and ``against`` (where the target's shape comes from, e.g. a config file) when
    the checkpoint lacks it or it does not fit."""
    if key not in state:
        raise CheckpointError(f"{path}: the checkpoint has no '{key}' state (it has {sorted(state)})")
    try:
        target.load_state_dict(state[key])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()] or [type(e).__name__]
        raise CheckpointError(f"{path}: the checkpoint's {key} does not fit the {key} of {against} (was it written by "
                              f"another configuration or dsmpnn version?): {' '.join(lines[:2])[:400]}") from None


def rng_state() -> dict[str, Any]:
    """The global torch (CPU and CUDA), numpy and Python random generators' states, as checkpoint-safe values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any] | None) -> None:
    """Restore what :func:`rng_state` returned (nothing when ``state`` is None, e.g. an older checkpoint)."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
