"""Prediction on a whole mesh: the full radius graph, or the mean of sampled graphs that cover every node."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dsmpnn.data.sample import MeshSample
from dsmpnn.graph import covering_samples
from dsmpnn.train.config import Config
from dsmpnn.train.features import FeatureMap, GraphStats, make_batch
from dsmpnn.train.step import StepGraph, run_step

__all__ = ["predict_sample"]


@torch.no_grad()
def predict_sample(model: nn.Module, fmap: FeatureMap, sample: MeshSample, cfg: Config,
                   device: torch.device | str = "cpu", seed: int = 0, stats: GraphStats | None = None) -> np.ndarray:
    """Predicted targets [N, T] in physical units.

    ``cfg.eval.mode == "full"``: one forward pass on the radius graph of all N nodes.
    ``"sampled"``: ``cfg.eval.samples`` subsets of ``cfg.graph.sample_nodes`` nodes that together cover every
    node equally often; each node's prediction is the mean over the subsets that contain it.
    ``stats`` counts the nodes without a neighbour in the graphs built.
    """
    model.eval()
    dtype = next(model.parameters()).dtype
    if cfg.eval.mode == "full":
        subsets = [None]
    else:
        subsets = covering_samples(sample.num_nodes, cfg.graph.sample_nodes, cfg.eval.samples,
                                   np.random.default_rng(seed))
    total = torch.zeros(sample.num_nodes, fmap.out_channels, dtype=torch.float64)
    count = torch.zeros(sample.num_nodes, 1, dtype=torch.float64)
    for idx in subsets:
        b = make_batch([(sample, idx)], fmap, cfg.graph.radius, cfg.graph.max_neighbors, dtype,
                       with_targets=False, max_edges=cfg.graph.max_edges, stats=stats,
                       cap_mode=cfg.graph.sampled_cap).to(device)
        out = run_step(model, [StepGraph(b.x, b.edge_index, b.edge_attr)], backward=False,
                       gather=True).outputs.double().cpu()  # [n, T] normalised
        rows = slice(None) if idx is None else torch.from_numpy(idx)
        total[rows] += out
        count[rows] += 1
    return fmap.to_physical(total / count)
