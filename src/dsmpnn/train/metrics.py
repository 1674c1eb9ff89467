r"""Error metrics in physical units.

- RMSE of field t over all nodes of all samples: :math:`\sqrt{\sum_s \sum_i (\hat y_{sit} - y_{sit})^2 / \sum_s N_s}`.
- Relative L2 of sample s: :math:`\|\hat y_s - y_s\|_2 / \|y_s\|_2` over all its nodes and target fields;
  reported as the mean over samples, and per field.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["compute_metrics"]


def compute_metrics(preds: Sequence[np.ndarray], trues: Sequence[np.ndarray], names: Sequence[str]) -> dict:
    """preds/trues: per-sample arrays [N_s, T] in physical units -> metrics dict (JSON-ready)."""
    if not preds:
        raise ValueError("no samples to compute metrics on")
    sq = sum(((p - t) ** 2).sum(axis=0) for p, t in zip(preds, trues))  # [T]
    count = sum(len(t) for t in trues)
    rmse = np.sqrt(sq / count)
    rel = [float(np.linalg.norm(p - t) / max(np.linalg.norm(t), 1e-300)) for p, t in zip(preds, trues)]
    rel_field = np.mean([np.linalg.norm(p - t, axis=0) / np.maximum(np.linalg.norm(t, axis=0), 1e-300)
                         for p, t in zip(preds, trues)], axis=0)
    return {
        "n_samples": len(preds),
        "rmse": {n: float(v) for n, v in zip(names, rmse)},
        "rel_l2": float(np.mean(rel)),
        "rel_l2_per_field": {n: float(v) for n, v in zip(names, rel_field)},
        "rel_l2_per_sample": rel,
    }
