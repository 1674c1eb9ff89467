"""Metrics logging: one JSON object per line in ``metrics.jsonl`` plus TensorBoard scalars."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "read_jsonl"]


class MetricsLogger:
    """Appends records to ``run_dir/metrics.jsonl`` (flushed and fsynced per line) and to TensorBoard ``run_dir/tb``.

    On resume, records with ``epoch`` greater than ``resume_epoch`` are dropped first, so no line is duplicated.
    """

    def __init__(self, run_dir: Path, resume_epoch: int | None = None, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_epoch is None:
            self.path.write_text("")
        elif self.path.exists():
            keep = [r for r in read_jsonl(self.path) if r.get("epoch", 0) <= resume_epoch]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))
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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
