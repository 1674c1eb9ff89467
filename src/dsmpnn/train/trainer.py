"""The S-MPNN training loop: Adam on the MSE of normalised targets over Nyström-sampled radius graphs.

Each epoch draws ``graph.samples_per_mesh`` node subsets of ``graph.sample_nodes`` nodes from every training mesh
(numpy generator seeded by (seed, epoch), so a resumed run draws exactly what an uninterrupted one would), builds
the radius graph on each subset, and takes one optimizer step per ``train.batch_graphs`` graphs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dsmpnn.data.dataset import Dataset
from dsmpnn.errors import CheckpointError
from dsmpnn.graph import sample_nodes
from dsmpnn.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from dsmpnn.train.config import Config
from dsmpnn.train.factory import build_model
from dsmpnn.train.features import FeatureMap, make_batch
from dsmpnn.train.inference import predict_sample
from dsmpnn.train.logger import MetricsLogger, read_jsonl
from dsmpnn.train.metrics import compute_metrics
from dsmpnn.train.plots import plot_loss_curve
from dsmpnn.train.rundir import RunDir

__all__ = ["train", "lr_factor", "resolve_device"]

VAL_SAMPLES = 4
"""Validation during training uses at most this many meshes of the 'val' split (full graphs)."""


def resolve_device(name: str = "auto") -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def lr_factor(step: int, total: int, warmup: int, kind: str, min_ratio: float) -> float:
    """Learning-rate multiplier at optimizer step ``step``: linear warm-up, then constant / cosine / step decay."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    if kind == "step":
        return 0.1 ** int(3 * min(frac, 0.999))
    return 1.0


def train(cfg: Config, data_dir: str | Path, run_dir: str | Path, resume: bool = False,
          progress: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Train the model of ``cfg`` on the dataset in ``data_dir``; write everything to ``run_dir``.

    With ``resume`` the newest readable checkpoint of ``run_dir`` is loaded and training continues from there.
    Returns the last epoch's record.
    """
    data = Dataset(data_dir)
    man = data.manifest
    rd = RunDir(Path(run_dir))
    if list_checkpoints(rd.checkpoints) and not resume:
        raise CheckpointError(f"{rd.root}: already holds a trained run; pass --resume to continue it or choose another --out")
    if resume and not list_checkpoints(rd.checkpoints):
        raise CheckpointError(f"{rd.root}: --resume given but there is no checkpoint to resume from")
    tc, gc = cfg.train, cfg.graph
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    dtype, device = getattr(torch, tc.dtype), resolve_device()
    fmap = FeatureMap(man, cfg.model.use_pos)
    model = build_model(cfg.model, fmap).to(dtype).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    train_set = data.load_split("train")
    val_set = data.load_split("val")[:VAL_SAMPLES] if data.manifest.splits.get("val") else []
    graphs_per_epoch = len(train_set) * gc.samples_per_mesh
    steps_per_epoch = math.ceil(graphs_per_epoch / tc.batch_graphs)
    total = tc.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, tc.warmup_epochs * steps_per_epoch, tc.scheduler, tc.min_lr_ratio))

    start = 0
    if resume:
        state, path = load_checkpoint(rd.checkpoints)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["epoch"])
        echo(f"resuming from {path} (epoch {start})")
    else:
        rd.write_meta(cfg, Path(data_dir), man)
    logger = MetricsLogger(rd.root, resume_epoch=start if resume else None)
    n_params = sum(p.numel() for p in model.parameters())
    echo(f"training {n_params:,} parameters on {len(train_set)} meshes x {gc.samples_per_mesh} samples of "
         f"{gc.sample_nodes} nodes, {steps_per_epoch} steps/epoch, epochs {start + 1}..{tc.epochs}, device {device}")

    record: dict = {}
    bar = tqdm(range(start + 1, tc.epochs + 1), desc="train", unit="epoch", disable=not progress, initial=start,
               total=tc.epochs)
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            rng = np.random.default_rng([tc.seed, epoch])
            items = [(s, sample_nodes(s.num_nodes, gc.sample_nodes, rng))
                     for s in train_set for _ in range(gc.samples_per_mesh)]
            order = rng.permutation(len(items))
            model.train()
            loss_sum, nodes = 0.0, 0
            for b in range(0, len(order), tc.batch_graphs):
                batch = make_batch([items[i] for i in order[b:b + tc.batch_graphs]], fmap, gc.radius,
                                   gc.max_neighbors, dtype).to(device)
                pred = model(batch.x, batch.edge_index, batch.edge_attr)  # [n, T] normalised
                loss = torch.nn.functional.mse_loss(pred, batch.y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                opt.step()
                sched.step()
                loss_sum += loss.item() * batch.x.shape[0]
                nodes += batch.x.shape[0]
            record = {"epoch": epoch, "step": epoch * steps_per_epoch, "train_loss": loss_sum / nodes,
                      "lr": opt.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - t0}
            if val_set and (epoch % tc.eval_every == 0 or epoch == tc.epochs):
                preds = [predict_sample(model, fmap, s, cfg, device) for s in val_set]
                record["val_rel_l2"] = compute_metrics(preds, [s.y for s in val_set],
                                                       [f.name for f in man.target_fields])["rel_l2"]
            logger.log(record)
            bar.set_postfix(loss=f"{record['train_loss']:.3g}", **(
                {"val_rel_l2": f"{record['val_rel_l2']:.3g}"} if "val_rel_l2" in record else {}))
            if epoch % tc.checkpoint_every == 0 or epoch == tc.epochs:
                save_checkpoint(rd.checkpoints, epoch, {
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch, "config": cfg.to_dict()}, keep=tc.keep_checkpoints)
    finally:
        logger.close()
        bar.close()
    records = read_jsonl(logger.path)
    if records:
        plot_loss_curve(records, rd.plots / "loss_curve.png")
    return record
