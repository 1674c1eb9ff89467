"""Metrics logging: one JSON object per line in ``metrics.jsonl`` plus TensorBoard scalars."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dsmpnn.data.textfile import read_text
from dsmpnn.errors import CheckpointError
from dsmpnn.train.checkpoint import atomic_write_bytes, write_error

__all__ = ["MetricsLogger", "read_jsonl"]


class MetricsLogger:
    """Appends records to ``run_dir/metrics.jsonl`` (flushed and fsynced per line) and to TensorBoard ``run_dir/tb``.

    On resume, records with ``epoch`` greater than ``resume_epoch`` are dropped first (and a last line cut short by
    a killed process), so no line is duplicated; the file is replaced atomically, so a kill during the rewrite loses
    nothing.
    """

    def __init__(self, run_dir: Path, resume_epoch: int | None = None, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_epoch is None:
            atomic_write_bytes(self.path, b"")
        elif self.path.exists():
            keep = [r for r in read_jsonl(self.path, complete_only=True) if r.get("epoch", 0) <= resume_epoch]
            atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in keep).encode())
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_epoch)

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line; a :class:`~dsmpnn.errors.WriteError` when it cannot be written."""
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise write_error(self.path, e) from None
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k, v, record.get("epoch", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_jsonl(path: Path, complete_only: bool = False) -> list[dict[str, Any]]:
    """The records (JSON objects) of a JSON-lines file. ``complete_only``: skip a last line without its newline
    (the write of a process killed mid-line). A :class:`~dsmpnn.errors.CheckpointError` naming the file (and line)
    when it is not UTF-8 or a line is not a JSON object."""
    text = read_text(path, "metrics log (`dsmpnn train` writes one JSON object a line)", CheckpointError)
    lines = text.splitlines()
    if complete_only and text and not text.endswith("\n"):
        lines = lines[:-1]
    return [_record(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]


def _record(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        record = None
    if not isinstance(record, dict):
        raise CheckpointError(f"{path}: line {number} is not a JSON object ({line[:40]!r}); `dsmpnn train` writes "
                              "one a line: restore the file from a copy, or delete the line")
    return record
