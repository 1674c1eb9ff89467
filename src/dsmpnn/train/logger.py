"""Metrics logging: one JSON object per line in ``metrics.jsonl`` plus TensorBoard scalars."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dsmpnn.train.checkpoint import atomic_write_bytes

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
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k, v, record.get("epoch", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_jsonl(path: Path, complete_only: bool = False) -> list[dict[str, Any]]:
    """The records of a JSON-lines file. ``complete_only``: skip a last line without its newline (the write of a
    process killed mid-line) and lines that do not parse, instead of raising."""
    text = Path(path).read_text()
    lines = text.splitlines()
    if complete_only and text and not text.endswith("\n"):
        lines = lines[:-1]
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if not complete_only:
                raise
    return out
