"""Nyström node sampling (Li et al. 2020, Graph Kernel Network).

Each training step uses a random subset of m mesh nodes and the radius graph built on that subset; with mean
aggregation the sampled graph is a Monte-Carlo estimate of the same integral operator as the full graph.
"""

from __future__ import annotations

import numpy as np

from dsmpnn.errors import GraphError

__all__ = ["sample_nodes", "covering_samples", "sampled_cap", "CAP_MODES"]

CAP_MODES = ("scaled", "fixed")


def sample_nodes(num_nodes: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """m distinct node indices drawn uniformly without replacement, sorted; all nodes when m >= num_nodes."""
    if m <= 0:
        raise GraphError(f"number of sampled nodes must be positive, got {m}")
    if m >= num_nodes:
        return np.arange(num_nodes)
    return np.sort(rng.choice(num_nodes, size=m, replace=False))


def covering_samples(num_nodes: int, m: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """k node subsets of size about m whose union is every node (for sampled inference).

    Each round is a random permutation split into ceil(N / m) nearly equal parts, so every node lies in exactly
    ``rounds`` subsets; ``k`` is rounded up to a whole number of rounds.
    """
    if m <= 0 or k <= 0:
        raise GraphError(f"sampled inference needs m > 0 and k > 0, got m={m}, k={k}")
    parts = max(1, int(np.ceil(num_nodes / m)))
    rounds = max(1, int(np.ceil(k / parts)))
    out = []
    for _ in range(rounds):
        out.extend(np.sort(p) for p in np.array_split(rng.permutation(num_nodes), parts))
    return out


def sampled_cap(max_neighbors: int | None, m: int, n: int, mode: str = "scaled") -> int | None:
    """The neighbour cap of a radius graph on m of a mesh's n nodes.

    ``fixed``: ``max_neighbors`` itself. ``scaled``: ``max(1, round(k m / n))``: the k nearest neighbours of a node
    on the full mesh lie within some distance rho_k; of them about k m / n are sampled, so capping the sampled graph
    at k m / n keeps its reach near rho_k, and its mean aggregation stays a Monte-Carlo estimate of the full graph's
    (a fixed cap k on a sample reaches about sqrt(n / m) farther in 2D, so training and inference graphs differ).
    """
    if max_neighbors is None or m >= n or mode == "fixed":
        return max_neighbors
    if mode != "scaled":
        raise GraphError(f"cap mode must be one of {CAP_MODES}, got {mode!r}")
    return max(1, round(max_neighbors * m / n))
