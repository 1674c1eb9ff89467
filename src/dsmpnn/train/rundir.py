"""A run directory: what training writes and what evaluate/predict read back.

    RUN/config.yaml          resolved configuration (of the latest resume, see below)
    RUN/dataset.json         dataset path and manifest (field names, units, normalisation statistics)
    RUN/checkpoints/         ckpt_epoch_NNNNNN.pt (atomic, checksummed, last K verified ones kept)
    RUN/metrics.jsonl        one record per epoch;  RUN/tb/  TensorBoard
    RUN/plots/               loss curve, truth / prediction / error figures
    RUN/metrics.json         written by `dsmpnn evaluate`
    RUN/.dsmpnn.lock         held (flock) by the process training into RUN; holds its PID and host

Ownership: ``train --out`` writes only into a new or empty directory or a dsmpnn run (:func:`check_out_dir`), and
only while it holds the run's lock (:class:`RunLock`). ``--resume`` may change only the keys in
:data:`RESUMABLE_KEYS` (the run directory then records the new values); any other key, or another dataset,
changes what the checkpoints mean and is refused (:func:`resume_changes`).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

import dsmpnn
from dsmpnn.data.dataset import Manifest
from dsmpnn.data.textfile import read_json
from dsmpnn.distributed.launch import LAUNCHER_PID_ENV
from dsmpnn.errors import CheckpointError
from dsmpnn.train.checkpoint import atomic_write_bytes, load_checkpoint, load_state, write_error
from dsmpnn.train.config import Config, read_config_file
from dsmpnn.train.factory import build_model
from dsmpnn.train.features import FeatureMap

__all__ = ["RunDir", "LoadedRun", "load_run", "RunLock", "LOCK_NAME", "RESUMABLE_KEYS", "check_out_dir",
           "is_run_dir", "resume_changes"]

LOCK_NAME = ".dsmpnn.lock"

RESUMABLE_KEYS = frozenset({
    "train.epochs", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints", "train.threads",
    "graph.max_edges", "model.checkpoint_layers", "eval.mode", "eval.samples", "eval.plot_samples",
    "distributed.partition", "distributed.halo_hops", "distributed.timeout_s"})
"""Config keys a ``--resume`` may change: how long, how often to evaluate or checkpoint, resources and limits,
and how the ranks split the work (exact up to round-off); none changes what the checkpoints mean."""

_MANIFEST_LABELS = frozenset({"name", "description"})  # a dataset's labels, not its meaning


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def write_meta(self, cfg: Config, data_dir: Path, manifest: Manifest) -> None:
        """Record the configuration and the dataset of the run (each file atomically)."""
        self.root.mkdir(parents=True, exist_ok=True)
        meta = {"path": str(Path(data_dir).resolve()), "manifest": manifest.to_json(), "version": dsmpnn.__version__}
        atomic_write_bytes(self.root / "dataset.json", json.dumps(meta, indent=1).encode())
        atomic_write_bytes(self.root / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())

    def read_meta(self) -> tuple[Config, Path, Manifest]:
        if not self.root.is_dir():
            raise CheckpointError(f"{self.root}: run directory does not exist")
        for name in ("config.yaml", "dataset.json"):
            if not (self.root / name).is_file():
                raise CheckpointError(f"{self.root}: not a dsmpnn run directory (no {name}); pass the --out of `dsmpnn train`")
        cfg_path, meta_path = self.root / "config.yaml", self.root / "dataset.json"
        cfg = Config.from_dict(read_config_file(cfg_path), str(cfg_path))
        meta = read_json(meta_path, "run file (`dsmpnn train` writes it: restore it from a copy or train again)",
                         CheckpointError)
        if not _is_meta(meta):
            raise CheckpointError(f"{meta_path}: expected an object with 'path' (the dataset directory) and "
                                  "'manifest'")
        return cfg, Path(meta["path"]), Manifest.from_json(meta["manifest"], meta_path)


def _is_meta(meta: Any) -> bool:
    return isinstance(meta, dict) and isinstance(meta.get("path"), str) and "manifest" in meta


def is_run_dir(root: Path) -> bool:
    """Whether ``root`` holds the ``dataset.json`` that ``dsmpnn train`` writes first (whatever else it holds)."""
    path = Path(root) / "dataset.json"
    try:
        return path.is_file() and _is_meta(read_json(path, "run file", CheckpointError))
    except CheckpointError:
        return False


def check_out_dir(root: Path) -> None:
    """Refuse ``train --out root`` when ``root`` is a non-empty directory that is not a dsmpnn run (it would mix
    the run's files with someone else's and overwrite some)."""
    root = Path(root)
    if not root.is_dir() or is_run_dir(root):
        return
    names = sorted(p.name for p in root.iterdir() if p.name != LOCK_NAME)
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise CheckpointError(f"{root}: --out is a non-empty directory that is not a dsmpnn run (it holds {shown}); "
                              "choose a new or empty directory")


def resume_changes(rd: RunDir, cfg: Config, data_dir: Path, manifest: Manifest) -> list[str]:
    """What a ``--resume`` of ``rd`` with ``cfg`` on the dataset in ``data_dir`` changes, as "key old -> new": keys
    of :data:`RESUMABLE_KEYS`, and the dataset's path when it moved (same manifest). A :class:`CheckpointError`
    naming the first other key that differs, or the first manifest key where the dataset differs from the run's."""
    old_cfg, old_data, old_manifest = rd.read_meta()
    for key, old, new in _differences(old_manifest.to_json(), manifest.to_json()):
        if key.split(".")[0] not in _MANIFEST_LABELS:
            raise CheckpointError(
                f"{rd.root}: --resume on another dataset: manifest '{key}' is {_short(new)} in {data_dir}, but the "
                f"run was trained on {_short(old)} ({old_data}); resume with --data {old_data}, or train a new run")
    changes = []
    if Path(data_dir).resolve() != old_data:
        changes.append(f"dataset {old_data} -> {Path(data_dir).resolve()} (the same manifest)")
    for key, old, new in _differences(old_cfg.to_dict(), cfg.to_dict()):
        if key not in RESUMABLE_KEYS:
            raise CheckpointError(
                f"{rd.root}: --resume changes {key} from {_short(old)} (the run's config.yaml) to {_short(new)}, "
                "which changes what the checkpoints mean; resume without changing it, or train a new run "
                f"(a resume may change {', '.join(sorted(RESUMABLE_KEYS))})")
        changes.append(f"{key} {_short(old)} -> {_short(new)}")
    return changes


def _differences(old: Any, new: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every leaf where two nested dicts differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            yield from _differences(old.get(key), new.get(key), f"{prefix}{key}.")
    elif old != new:
        yield prefix[:-1], old, new


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (long lists are cut before they are formatted)."""
    if isinstance(value, (list, tuple)) and len(value) > limit:
        value = list(value[:limit])
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class RunLock:
    """An exclusive ``flock`` on ``RUN/.dsmpnn.lock``, held while a process trains into RUN; the file holds the
    holder's PID and host. The kernel drops the lock when its holder dies, so a lock left by a killed run is free.

    One process of a run holds it: ``dsmpnn train --nproc P`` (the launcher, for the whole run, restarts included)
    or rank 0 (one process, or the ranks of a plain torchrun). Rank 0 of a launcher that holds the lock finds its
    parent's PID, or the launcher's PID its fork server passed on, in the file and goes on without locking. :meth:`release` empties the file (or removes it, and the
    directory when it made it, when nothing else was written), so a failed start leaves nothing behind.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self._fd: int | None = None
        self._made_dir = False

    def acquire(self) -> "RunLock":
        """Take the lock (creating RUN if needed); a :class:`CheckpointError` naming the holder when it is held."""
        host = socket.gethostname()
        while self._fd is None:
            self._made_dir = self._made_dir or not self.root.exists()
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
                os.close(fd)
                if holder == [str(os.getppid()), host] or holder == [os.environ.get(LAUNCHER_PID_ENV), host]:
                    return self  # our launcher holds it for this run (the ranks' parent is its fork server)
                raise CheckpointError(f"{self.root}: run directory in use by {_holder(holder)} (lock "
                                      f"{self.path}); wait for it to end, or choose another --out") from None
            if _same_file(fd, self.path):
                self._fd = fd
                self._write(f"{os.getpid()} {host}\n")
            else:  # its previous holder removed the file: lock the new one
                os.close(fd)
        return self

    def _write(self, text: str) -> None:
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text.encode(), 0)
            os.fsync(self._fd)
        except OSError as e:
            self.release()
            raise write_error(self.path, e) from None

    def release(self) -> None:
        """Drop the lock; clear the file, or remove it (and RUN, if this lock made it) when RUN holds nothing else."""
        if self._fd is None:
            return
        try:
            if [p.name for p in self.root.iterdir()] == [LOCK_NAME]:
                self.path.unlink()
                if self._made_dir:
                    self.root.rmdir()
            else:
                os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(words: list[str]) -> str:
    if len(words) == 2 and words[0].isdigit():
        return f"`dsmpnn train` PID {words[0]} on host {words[1]}"
    return "another `dsmpnn train` (it has not written its PID yet)"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


@dataclass
class LoadedRun:
    cfg: Config
    data_dir: Path
    fmap: FeatureMap
    model: nn.Module
    epoch: int


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild the trained model from the newest readable checkpoint of a run directory."""
    rd = RunDir(Path(run_dir))
    cfg, data_dir, manifest = rd.read_meta()
    fmap = FeatureMap.from_config(manifest, cfg)
    state, path = load_checkpoint(rd.checkpoints)
    model = build_model(cfg.model, fmap).to(getattr(torch, cfg.train.dtype))
    load_state(model, state, "model", path, str(rd.root / "config.yaml"))
    return LoadedRun(cfg, data_dir, fmap, model.to(device), int(state["epoch"]))
