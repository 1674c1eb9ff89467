"""Per-channel normalisation statistics: z = (v - mean) / std, computed on the training split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsmpnn.errors import DatasetError

__all__ = ["Stats", "RunningStats"]


@dataclass(frozen=True)
class Stats:
    """Mean and standard deviation per channel; ``std`` is floored so constant channels map to 0."""

    mean: np.ndarray  # [C]
    std: np.ndarray  # [C]

    def __eq__(self, other: object) -> bool:  # the generated one compares arrays with ==, which raises
        if not isinstance(other, Stats):
            return NotImplemented
        return bool(np.array_equal(self.mean, other.mean) and np.array_equal(self.std, other.std))

    def normalize(self, v: np.ndarray) -> np.ndarray:
        """z = (v - mean) / std, v: [N, C]."""
        return (v - self.mean) / self.std

    def denormalize(self, z: np.ndarray) -> np.ndarray:
        """v = z * std + mean, z: [N, C]."""
        return z * self.std + self.mean

    def to_json(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @staticmethod
    def from_json(obj: dict, size: int, where: str) -> "Stats":
        try:
            mean = np.asarray(obj["mean"], dtype=np.float64)
            std = np.asarray(obj["std"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{where}: expected {{\"mean\": [{size} numbers], \"std\": [{size} numbers]}}") from None
        if mean.shape != (size,) or std.shape != (size,):
            raise DatasetError(f"{where}: mean/std have {mean.size}/{std.size} entries, expected {size}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise DatasetError(f"{where}: mean/std must be finite and std > 0")
        return Stats(mean, std)


class RunningStats:
    """Accumulates per-channel sums over many [N, C] arrays (float64, two-pass-free but exact enough)."""

    def __init__(self) -> None:
        self.n = 0
        self.s1: np.ndarray | None = None
        self.s2: np.ndarray | None = None
        self.shift: np.ndarray | None = None

    def update(self, v: np.ndarray) -> None:
        if self.shift is None:
            self.shift = v.mean(axis=0)  # shifting by a first estimate keeps the variance sum well-conditioned
            self.s1 = np.zeros(v.shape[1])
            self.s2 = np.zeros(v.shape[1])
        d = v - self.shift
        self.n += v.shape[0]
        self.s1 += d.sum(axis=0)
        self.s2 += (d * d).sum(axis=0)

    def finish(self, floor: float = 1e-8) -> Stats:
        if self.n == 0:
            raise DatasetError("cannot compute statistics: the training split has no nodes")
        m1 = self.s1 / self.n
        var = np.maximum(self.s2 / self.n - m1 * m1, 0.0)
        std = np.sqrt(var)
        scale = np.maximum(np.abs(self.shift + m1), 1.0)
        std = np.where(std > floor * scale, std, 1.0)
        return Stats(self.shift + m1, std)
