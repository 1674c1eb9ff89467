"""The training loop: Adam on the MSE of normalised targets over Nyström-sampled radius graphs.

Each epoch draws ``graph.samples_per_mesh`` node subsets of ``graph.sample_nodes`` nodes from every training mesh
(:func:`dsmpnn.train.step.epoch_batches`: numpy generator seeded by (seed, epoch), so a resumed run draws exactly
what an uninterrupted one would, and every rank of a distributed run draws the same), builds the radius graph on
each subset, and takes one optimizer step per ``train.batch_graphs`` graphs. How a step's graphs are built -- one
process (S-MPNN) or P ranks with halo exchange (DS-MPNN) -- is the step strategy's business
(:mod:`dsmpnn.train.strategy`); both run the one step function :func:`dsmpnn.train.step.run_step`, which
``dsmpnn check`` verifies.

Run on P ranks (one process per rank; ``--nproc`` launches them as ``torchrun --standalone`` would)::

    dsmpnn train --config configs/darcy.yaml --data data/darcy --out runs/darcy --nproc 4 --partition metis
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m dsmpnn.cli train --config configs/darcy.yaml --data data/darcy --out runs/darcy

Only rank 0 logs, checkpoints and plots. A SIGINT/SIGTERM on any rank stops every rank after the same step.
"""

from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dsmpnn.data.dataset import Dataset
from dsmpnn.data.paths import check_output_path
from dsmpnn.distributed import DistContext, current_context, run_agreed
from dsmpnn.errors import CheckpointError, Interrupted, TrainingDiverged
from dsmpnn.train.checkpoint import (list_checkpoints, load_checkpoint, load_state, rng_state, save_checkpoint,
                                     set_rng_state)
from dsmpnn.train.config import Config
from dsmpnn.train.divergence import diverged_message, non_finite, non_finite_parameters
from dsmpnn.train.factory import build_model
from dsmpnn.train.features import FeatureMap, GraphStats, check_split_graphs
from dsmpnn.train.logger import MetricsLogger, read_jsonl
from dsmpnn.train.metrics import compute_metrics
from dsmpnn.train.plots import plot_loss_curve
from dsmpnn.train.rundir import RunDir, RunLock, check_out_dir, resume_changes
from dsmpnn.train.step import epoch_batches
from dsmpnn.train.strategy import make_strategy

__all__ = ["train", "lr_factor", "resolve_device", "StopRequest"]

VAL_SAMPLES = 4
"""Validation during training uses at most this many meshes of the 'val' split (full graphs)."""


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a request that the loop honours between optimizer steps (so the
    checkpoint it saves is consistent); a second SIGINT interrupts at once. Only active in the main thread."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


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
          progress: bool = True, echo: Callable[[str], None] = print, ctx: DistContext | None = None) -> dict:
    """Train the model of ``cfg`` on the dataset in ``data_dir``; write everything to ``run_dir``.

    With ``resume`` the newest readable checkpoint of ``run_dir`` is loaded and training continues from there.
    ``ctx``: the process group to train in (default: the one this process belongs to, if any). With two or more
    ranks the run is domain-decomposed (:class:`~dsmpnn.train.strategy.DomainDecomposed`): every rank calls this
    function, the result equals the single-process run up to round-off, and only rank 0 writes the run directory,
    holding its lock (:class:`~dsmpnn.train.rundir.RunLock`) meanwhile. Returns the last epoch's record (without
    validation metrics on ranks other than 0); an empty one when a resumed run is already complete.
    Raises :class:`~dsmpnn.errors.TrainingDiverged` when the loss or the parameters stop being finite.
    """
    ctx = current_context() if ctx is None else ctx
    tc, gc = cfg.train, cfg.graph
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    rd = RunDir(Path(run_dir))

    def open_dataset() -> tuple[Dataset, list[str]]:
        check_output_path(rd.root, "directory", "the run directory (--out)")
        if not resume:
            check_out_dir(rd.root)
        data = Dataset(data_dir)
        changes = resume_changes(rd, cfg, Path(data_dir), data.manifest) if resume else []
        # refuse a graph too large for memory now, before anything is written (the largest mesh of each use;
        # METIS partitions the whole mesh's graph, which holds every sampled one)
        metis = ctx.world_size > 1 and cfg.distributed.partition == "metis"
        check_split_graphs(data, data.split("train"), cfg.graph,
                           "partitioning it with METIS" if metis else "training on Nyström samples",
                           None if metis else gc.sample_nodes)
        full_val = cfg.eval.mode == "full" or metis
        check_split_graphs(data, data.manifest.splits.get("val", ())[:VAL_SAMPLES], cfg.graph,
                           "validation on the full mesh" if full_val else "validation on sampled graphs",
                           None if full_val else gc.sample_nodes)
        return data, changes

    data, changes = run_agreed(open_dataset)  # the same error on every rank (plain call without a process group)
    lock = RunLock(rd.root)

    def claim() -> None:
        if ctx.is_main:
            lock.acquire()
        if list_checkpoints(rd.checkpoints) and not resume:
            raise CheckpointError(f"{rd.root}: already holds a trained run; pass --resume to continue it or choose "
                                  "another --out")
        if resume and not list_checkpoints(rd.checkpoints):
            raise CheckpointError(f"{rd.root}: --resume given but there is no checkpoint to resume from")

    try:
        run_agreed(claim)
        return _train_claimed(cfg, data, Path(data_dir), rd, resume, changes, progress, echo, ctx)
    finally:
        lock.release()


def _train_claimed(cfg: Config, data: Dataset, data_dir: Path, rd: RunDir, resume: bool, changes: list[str],
                   progress: bool, echo: Callable[[str], None], ctx: DistContext) -> dict:
    """:func:`train` once the run directory is known to be usable and this run holds it."""
    main = ctx.is_main
    say = echo if main else (lambda s: None)
    tc, gc = cfg.train, cfg.graph
    state, path = run_agreed(lambda: load_checkpoint(rd.checkpoints)) if resume else ({}, None)
    start, resume_batch = int(state.get("epoch", 0)), int(state.get("batch", 0))
    if resume and start >= tc.epochs and not resume_batch:
        say(f"run {rd.root} is complete: {start} of {tc.epochs} epochs; raise train.epochs to continue "
            f"(e.g. train.epochs={start + tc.epochs}), nothing was written")
        return {}
    dtype = getattr(torch, tc.dtype)
    device = ctx.device if ctx.world_size > 1 else resolve_device()
    man = data.manifest
    fmap = FeatureMap.from_config(man, cfg)
    strategy = make_strategy(ctx, cfg, fmap, dtype, device)
    model = build_model(cfg.model, fmap).to(dtype).to(device)
    strategy.broadcast(model)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    train_set = strategy.load(data, "train")
    val_set = strategy.load(data, "val", limit=VAL_SAMPLES, keep_full=True) if man.splits.get("val") else []
    graphs_per_epoch = len(train_set) * gc.samples_per_mesh
    steps_per_epoch = math.ceil(graphs_per_epoch / tc.batch_graphs)
    total = tc.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, tc.warmup_epochs * steps_per_epoch, tc.scheduler, tc.min_lr_ratio))

    partial = (0.0, 0)
    if resume:
        def restore() -> None:
            against = "the configuration of this --resume (config file and overrides)"
            for key, target in (("model", model), ("optimizer", opt), ("scheduler", sched)):
                load_state(target, state, key, path, against)

        strategy.agreed(restore)
        set_rng_state(state.get("rng"))  # rank 0's generators, which are every rank's (see checkpoint.py)
        partial = tuple(state.get("partial", (0.0, 0)))
        strategy.same_everywhere((path.name, start, resume_batch), "the checkpoint to resume from")
        say(f"resuming from {path} (epoch {start} done" + (f", {resume_batch} graphs into epoch {start + 1})"
                                                           if resume_batch else ")"))
    if main and not resume:
        rd.write_meta(cfg, data_dir, man)  # first: it makes the directory a run (rundir.is_run_dir)
    logger = strategy.agreed(lambda: MetricsLogger(rd.root, resume_epoch=start if resume else None) if main
                             else None)
    if changes:
        say("changed by this --resume (recorded in the run's config.yaml with its first checkpoint): "
            + "; ".join(changes))
    n_params = sum(p.numel() for p in model.parameters())
    where = (f"{ctx.world_size} ranks ({cfg.distributed.partition} partition, halo_hops "
             f"{cfg.distributed.halo_hops}), device {device}" if ctx.world_size > 1 else f"device {device}")
    say(f"training {n_params:,} parameters on {len(train_set)} meshes x {gc.samples_per_mesh} samples of "
        f"{gc.sample_nodes} nodes, {steps_per_epoch} steps/epoch, epochs {start + 1}..{tc.epochs}, {where}")
    saved = [path.name if path is not None else None]  # the newest checkpoint of this run
    unrecorded = [bool(changes)]  # the run directory describes what produced its checkpoints

    def checkpoint(epoch: int, batch: int = 0, part: tuple[float, int] = (0.0, 0)) -> Path | None:
        """``epoch`` epochs done, plus ``batch`` graphs of the next one (an interrupted epoch). Rank 0 writes."""
        if not main:
            return None
        if unrecorded[0]:
            rd.write_meta(cfg, data_dir, man)
            unrecorded[0] = False
        written = save_checkpoint(rd.checkpoints, epoch, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": rng_state(), "epoch": epoch, "batch": batch, "partial": list(part), "step": sched.last_epoch,
            "config": cfg.to_dict()}, keep=tc.keep_checkpoints, graphs=batch)
        saved[0] = written.name
        return written

    record: dict = {}
    bar = tqdm(range(start + 1, tc.epochs + 1), desc="train", unit="epoch", disable=not (progress and main),
               initial=start, total=tc.epochs)
    sizes = [s.num_nodes for s in train_set]
    try:
        with StopRequest() as stop:
            for epoch in bar:
                t0 = time.perf_counter()
                batches = epoch_batches(sizes, cfg, epoch)  # the same draws on every rank
                graph_stats = GraphStats() if epoch == start + 1 else None  # reported once, for the first epoch
                model.train()
                first = resume_batch if epoch == start + 1 else 0
                loss_sum, nodes = partial if first else (0.0, 0)
                for b in range(first, len(batches) * tc.batch_graphs, tc.batch_graphs):
                    opt.zero_grad(set_to_none=True)
                    res = strategy.step(model, [(train_set[k], ids) for k, ids in batches[b // tc.batch_graphs]],
                                        stop.requested)
                    loss, n, stopping = res.loss, res.nodes, res.stop
                    if graph_stats is not None:
                        graph_stats.merge(res.graph_stats)
                    grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                                 if tc.grad_clip else None)
                    problem = non_finite(loss, grad_norm)
                    if problem is None:
                        opt.step()
                        sched.step()
                        problem = non_finite_parameters(model)
                    if problem is not None:  # every rank sees the same loss, gradients and parameters
                        raise strategy.error(TrainingDiverged(diverged_message(
                            problem, epoch, b // tc.batch_graphs + 1, steps_per_epoch, saved[0], cfg, man)))
                    loss_sum += loss * n
                    nodes += n
                    if stopping:
                        written = checkpoint(epoch - 1, b + tc.batch_graphs, (loss_sum, nodes))
                        strategy.barrier()
                        raise strategy.error(Interrupted(
                            f"interrupted during epoch {epoch}; saved {written}; continue with --resume"))
                record = {"epoch": epoch, "step": epoch * steps_per_epoch, "train_loss": loss_sum / nodes,
                          "lr": opt.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - t0}
                if graph_stats is not None:
                    stats = strategy.total_graph_stats(graph_stats)  # every rank: a collective in DS mode
                    isolated = stats.warning(gc.radius, f"the {stats.graphs} sampled graphs of epoch {epoch}",
                                             "a larger graph.radius or graph.sample_nodes")
                    if isolated and main:
                        warnings.warn(isolated, stacklevel=2)
                if val_set and (epoch % tc.eval_every == 0 or epoch == tc.epochs):
                    preds = [strategy.predict(model, s) for s in val_set]  # None on ranks other than 0
                    if main:
                        record["val_rel_l2"] = compute_metrics(preds, [strategy.full(s).y for s in val_set],
                                                               [f.name for f in man.target_fields])["rel_l2"]
                if main:
                    logger.log(record)
                    bar.set_postfix(loss=f"{record['train_loss']:.3g}", **(
                        {"val_rel_l2": f"{record['val_rel_l2']:.3g}"} if "val_rel_l2" in record else {}))
                stopping = strategy.agree_stop(stop.requested)
                if epoch % tc.checkpoint_every == 0 or epoch == tc.epochs or stopping:
                    checkpoint(epoch)
                if stopping:
                    strategy.barrier()
                    raise strategy.error(Interrupted(
                        f"interrupted after epoch {epoch}; checkpoint saved; continue with --resume"))
    finally:
        if logger is not None:
            logger.close()
        bar.close()
    if main:
        records = read_jsonl(logger.path)
        if records:
            plot_loss_curve(records, rd.plots / "loss_curve.png")
    strategy.barrier()  # the run directory is complete when train() returns on any rank
    return record
