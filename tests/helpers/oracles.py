"""Slow, obvious reference implementations the fast code is checked against."""

from __future__ import annotations

import numpy as np
import torch


def brute_radius_graph(pos: np.ndarray, radius: float) -> np.ndarray:
    """O(N^2) radius graph: every ordered pair with 0 < |p_j - p_i| <= r, sorted by (target, source)."""
    d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)  # [N, N], d[i, j]
    i, j = np.nonzero((d <= radius) & ~np.eye(len(pos), dtype=bool))
    return np.stack([j, i])


def brute_edge_attributes(pos: np.ndarray, edge_index: np.ndarray, radius: float,
                          fields: np.ndarray | None = None) -> np.ndarray:
    """One edge at a time: [(p_j - p_i) / r, |p_j - p_i| / r] and, with node fields f [N, F], then f_i and f_j
    (the GKN edge features), for each edge (j -> i) of ``edge_index`` (row 0 source j, row 1 target i)."""
    rows = []
    for j, i in edge_index.T:
        rel = (pos[j] - pos[i]) / radius
        row = [*rel, np.sqrt(np.sum(rel ** 2))]
        if fields is not None:
            row += [*fields[i], *fields[j]]
        rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1)


def dense_nnconv(x, edge_index, edge_attr, theta_fn, root, bias, aggr):
    """Per-edge NNConv with the full [E, C_in, C_out] kernel tensor."""
    src, dst = edge_index
    theta = theta_fn(edge_attr).view(-1, x.shape[1], root.shape[0])  # [E, C_in, C_out]
    msg = torch.einsum("ea,eac->ec", x[src], theta)
    out = torch.zeros(x.shape[0], root.shape[0], dtype=x.dtype).index_add_(0, dst, msg)
    if aggr == "mean":
        deg = torch.zeros(x.shape[0], dtype=x.dtype).index_add_(0, dst, torch.ones_like(dst, dtype=x.dtype))
        out = out / deg.clamp(min=1)[:, None]
    return out + x @ root.T + bias


def smooth_activation_truth(act: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GELU (exact, erf form) or SiLU of float64 inputs in 40-digit arithmetic (mpmath), rounded to float64:
    the value, the slope, and the slope's scale (the sum of the magnitudes of its two terms, Phi(z) + |z| phi(z)
    or s + |z s (1 - s)|: what a slope computed in floating point can be held to near its zero)."""
    import mpmath

    mp = mpmath.mp.clone()
    mp.dps = 40
    value, slope, scale = (np.empty(z.shape) for _ in range(3))
    for i, zi in enumerate(z.tolist()):
        x = mp.mpf(zi)
        if act == "gelu":
            phi_cdf = mp.erfc(-x / mp.sqrt(2)) / 2
            term = x * mp.exp(-x * x / 2) / mp.sqrt(2 * mp.pi)
        else:
            phi_cdf = 1 / (1 + mp.exp(-x))  # the logistic s(z) in the same role
            term = x * phi_cdf * (1 - phi_cdf)
        value[i], slope[i], scale[i] = float(x * phi_cdf), float(phi_cdf + term), float(phi_cdf + abs(term))
    return value, slope, scale
