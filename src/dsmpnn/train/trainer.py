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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from dsmpnn.data.dataset import Dataset, Manifest
from dsmpnn.data.paths import check_output_path
from dsmpnn.distributed import DistContext, current_context, run_agreed
from dsmpnn.errors import CheckpointError, Interrupted, TrainingDiverged
from dsmpnn.profiling import profiled
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
from dsmpnn.train.prefetch import prefetched, use_prefetch
from dsmpnn.train.step import epoch_batches
from dsmpnn.train.strategy import DomainDecomposed, SingleProcess, make_strategy

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
        return profiled(lambda: _train_claimed(cfg, data, Path(data_dir), rd, resume, changes, progress, echo, ctx),
                        ctx.rank)
    finally:
        lock.release()


def _train_claimed(cfg: Config, data: Dataset, data_dir: Path, rd: RunDir, resume: bool, changes: list[str],
                   progress: bool, echo: Callable[[str], None], ctx: DistContext) -> dict:
    """:func:`train` once the run directory is known to be usable and this run holds it."""
    say = echo if ctx.is_main else (lambda s: None)
    tc, gc = cfg.train, cfg.graph
    state, path = run_agreed(lambda: load_checkpoint(rd.checkpoints)) if resume else ({}, None)
    start, resume_batch = int(state.get("epoch", 0)), int(state.get("batch", 0))
    if resume and start >= tc.epochs and not resume_batch:
        say(f"run {rd.root} is complete: {start} of {tc.epochs} epochs; raise train.epochs to continue "
            f"(e.g. train.epochs={start + tc.epochs}), nothing was written")
        return {}
    loop = _Loop.build(cfg, data, data_dir, rd, ctx)
    if resume:
        loop.restore(state, path, start, resume_batch, say)
    if ctx.is_main and not resume:
        rd.write_meta(cfg, data_dir, data.manifest)  # first: it makes the directory a run (rundir.is_run_dir)
    loop.logger = loop.strategy.agreed(lambda: MetricsLogger(rd.root, resume_epoch=start if resume else None)
                                       if ctx.is_main else None)
    if changes:
        say("changed by this --resume (recorded in the run's config.yaml with its first checkpoint): "
            + "; ".join(changes))
    loop.unrecorded = bool(changes)
    n_params = sum(p.numel() for p in loop.model.parameters())
    where = (f"{ctx.world_size} ranks ({cfg.distributed.partition} partition, halo_hops "
             f"{cfg.distributed.halo_hops}), device {loop.strategy.device}" if ctx.world_size > 1
             else f"device {loop.strategy.device}")
    say(f"training {n_params:,} parameters on {len(loop.train_set)} meshes x {gc.samples_per_mesh} samples of "
        f"{gc.sample_nodes} nodes, {loop.steps_per_epoch} steps/epoch, epochs {start + 1}..{tc.epochs}, {where}")
    record: dict = {}
    bar = tqdm(range(start + 1, tc.epochs + 1), desc="train", unit="epoch", disable=not (progress and ctx.is_main),
               initial=start, total=tc.epochs)
    try:
        with StopRequest() as stop:
            for epoch in bar:
                first = resume_batch if epoch == start + 1 else 0
                record = loop.epoch(epoch, first, loop.partial if first else (0.0, 0), epoch == start + 1, stop)
                if ctx.is_main:
                    bar.set_postfix(loss=f"{record['train_loss']:.3g}", **(
                        {"val_rel_l2": f"{record['val_rel_l2']:.3g}"} if "val_rel_l2" in record else {}))
                stopping = loop.strategy.agree_stop(stop.requested)
                if epoch % tc.checkpoint_every == 0 or epoch == tc.epochs or stopping:
                    loop.checkpoint(epoch)
                if stopping:
                    loop.strategy.barrier()
                    raise loop.strategy.error(Interrupted(
                        f"interrupted after epoch {epoch}; checkpoint saved; continue with --resume"))
    finally:
        if loop.logger is not None:
            loop.logger.close()
        bar.close()
    if ctx.is_main:
        records = read_jsonl(loop.logger.path)
        if records:
            plot_loss_curve(records, rd.plots / "loss_curve.png")
    loop.strategy.barrier()  # the run directory is complete when train() returns on any rank
    return record


@dataclass
class _Loop:
    """What the epochs of one training run share: model, optimizer, schedule, data, strategy and run directory."""

    cfg: Config
    manifest: Manifest
    data_dir: Path
    rd: RunDir
    strategy: SingleProcess | DomainDecomposed
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    train_set: list
    val_set: list
    steps_per_epoch: int
    logger: MetricsLogger | None = None
    saved: str | None = None  # the newest checkpoint of this run
    unrecorded: bool = False  # the run directory does not yet describe what produces its checkpoints
    partial: tuple[float, int] = (0.0, 0)  # loss sum and nodes of the interrupted epoch resumed from

    @classmethod
    def build(cls, cfg: Config, data: Dataset, data_dir: Path, rd: RunDir, ctx: DistContext) -> "_Loop":
        tc, gc = cfg.train, cfg.graph
        dtype = getattr(torch, tc.dtype)
        device = ctx.device if ctx.world_size > 1 else resolve_device()
        fmap = FeatureMap.from_config(data.manifest, cfg)
        strategy = make_strategy(ctx, cfg, fmap, dtype, device)
        model = build_model(cfg.model, fmap).to(dtype).to(device)
        strategy.broadcast(model)
        opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        train_set = strategy.load(data, "train")
        val_set = (strategy.load(data, "val", limit=VAL_SAMPLES, keep_full=True) if data.manifest.splits.get("val")
                   else [])
        steps_per_epoch = math.ceil(len(train_set) * gc.samples_per_mesh / tc.batch_graphs)
        total = tc.epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, total, tc.warmup_epochs * steps_per_epoch, tc.scheduler, tc.min_lr_ratio))
        return cls(cfg, data.manifest, data_dir, rd, strategy, model, opt, sched, train_set, val_set,
                   steps_per_epoch)

    def restore(self, state: dict, path: Path, start: int, resume_batch: int, say: Callable[[str], None]) -> None:
        """Parameters, optimizer, schedule and generators of the checkpoint ``state`` read from ``path``."""
        def restore() -> None:
            against = "the configuration of this --resume (config file and overrides)"
            for key, target in (("model", self.model), ("optimizer", self.opt), ("scheduler", self.sched)):
                load_state(target, state, key, path, against)

        self.strategy.agreed(restore)
        set_rng_state(state.get("rng"))  # rank 0's generators, which are every rank's (see checkpoint.py)
        self.partial = tuple(state.get("partial", (0.0, 0)))
        self.saved = path.name
        self.strategy.same_everywhere((path.name, start, resume_batch), "the checkpoint to resume from")
        say(f"resuming from {path} (epoch {start} done" + (f", {resume_batch} graphs into epoch {start + 1})"
                                                           if resume_batch else ")"))

    def checkpoint(self, epoch: int, batch: int = 0, part: tuple[float, int] = (0.0, 0)) -> Path | None:
        """``epoch`` epochs done, plus ``batch`` graphs of the next one (an interrupted epoch). Rank 0 writes."""
        if not self.strategy.is_main:
            return None
        if self.unrecorded:
            self.rd.write_meta(self.cfg, self.data_dir, self.manifest)
            self.unrecorded = False
        written = save_checkpoint(self.rd.checkpoints, epoch, {
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "rng": rng_state(), "epoch": epoch, "batch": batch,
            "partial": list(part), "step": self.sched.last_epoch, "config": self.cfg.to_dict()},
            keep=self.cfg.train.keep_checkpoints, graphs=batch)
        self.saved = written.name
        return written

    def epoch(self, epoch: int, first: int, partial: tuple[float, int], report_graphs: bool,
              stop: StopRequest) -> dict:
        """Epoch ``epoch`` from its graph ``first`` on (``partial``: loss sum and nodes of the graphs before):
        its optimizer steps, each step's graphs built one step ahead (``train.prefetch``), then validation and
        the logged record."""
        tc = self.cfg.train
        t0 = time.perf_counter()
        batches = epoch_batches([s.num_nodes for s in self.train_set], self.cfg, epoch)  # the same on every rank
        graph_stats = GraphStats() if report_graphs else None  # reported once, for the run's first epoch
        self.model.train()
        loss_sum, nodes = partial
        steps = [[(self.train_set[k], ids) for k, ids in batch] for batch in batches[first // tc.batch_graphs:]]
        ahead = use_prefetch(tc.prefetch, torch.device(self.strategy.device))
        for s, prepared in enumerate(prefetched(self.strategy.prepare, steps, ahead)):
            b = first + s * tc.batch_graphs  # graphs of the epoch before this step
            self.opt.zero_grad(set_to_none=True)
            res = self.strategy.step(self.model, prepared, stop.requested)
            if graph_stats is not None:
                graph_stats.merge(res.graph_stats)
            self._optimizer_step(res.loss, epoch, b // tc.batch_graphs + 1)
            loss_sum += res.loss * res.nodes
            nodes += res.nodes
            if res.stop:
                written = self.checkpoint(epoch - 1, b + tc.batch_graphs, (loss_sum, nodes))
                self.strategy.barrier()
                raise self.strategy.error(Interrupted(
                    f"interrupted during epoch {epoch}; saved {written}; continue with --resume"))
        record = {"epoch": epoch, "step": epoch * self.steps_per_epoch, "train_loss": loss_sum / nodes,
                  "lr": self.opt.param_groups[0]["lr"], "epoch_seconds": time.perf_counter() - t0}
        if graph_stats is not None:
            self._warn_isolated(graph_stats, epoch)
        if self.val_set and (epoch % tc.eval_every == 0 or epoch == tc.epochs):
            preds = [self.strategy.predict(self.model, s) for s in self.val_set]  # None on ranks other than 0
            if self.strategy.is_main:
                record["val_rel_l2"] = compute_metrics(preds, [self.strategy.full(s).y for s in self.val_set],
                                                       [f.name for f in self.manifest.target_fields])["rel_l2"]
        if self.logger is not None:
            self.logger.log(record)
        return record

    def _optimizer_step(self, loss: float, epoch: int, step: int) -> None:
        """Clip, step and schedule; a :class:`TrainingDiverged` on every rank when the loss, the gradients or the
        parameters stop being finite (every rank sees the same ones)."""
        tc = self.cfg.train
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip) if tc.grad_clip else None
        problem = non_finite(loss, grad_norm)
        if problem is None:
            self.opt.step()
            self.sched.step()
            problem = non_finite_parameters(self.model)
        if problem is not None:
            raise self.strategy.error(TrainingDiverged(diverged_message(
                problem, epoch, step, self.steps_per_epoch, self.saved, self.cfg, self.manifest)))

    def _warn_isolated(self, graph_stats: GraphStats, epoch: int) -> None:
        stats = self.strategy.total_graph_stats(graph_stats)  # every rank: a collective in DS mode
        isolated = stats.warning(self.cfg.graph.radius, f"the {stats.graphs} sampled graphs of epoch {epoch}",
                                 "a larger graph.radius or graph.sample_nodes")
        if isolated and self.strategy.is_main:
            warnings.warn(isolated, stacklevel=3)
