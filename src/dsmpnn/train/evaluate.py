"""Evaluate a trained run on a dataset split, and predict the fields of one mesh file (one process or P ranks)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import meshio
import numpy as np

from dsmpnn.data.dataset import Dataset, read_sample_file
from dsmpnn.data.paths import check_output_path
from dsmpnn.data.sample import MeshSample
from dsmpnn.distributed import DistContext, current_context, run_agreed
from dsmpnn.errors import CheckpointError, ConfigError, DatasetError
from dsmpnn.train.checkpoint import atomic_write_bytes
from dsmpnn.train.config import Config
from dsmpnn.train.features import GraphStats, check_graph_size, check_split_graphs
from dsmpnn.train.metrics import compute_metrics
from dsmpnn.train.plots import ZOOMS, plot_fields
from dsmpnn.train.rundir import load_run
from dsmpnn.train.strategy import make_strategy
from dsmpnn.train.trainer import resolve_device

__all__ = ["evaluate_run", "predict_file", "read_mesh_input", "vtu_bytes"]


def _distributed_overrides(cfg: Config, partition: str | None, halo_hops: int | None) -> Config:
    """``cfg`` with the partition method and halo width of a distributed evaluation replaced where given."""
    changes = {k: v for k, v in (("partition", partition), ("halo_hops", halo_hops)) if v is not None}
    if not changes:
        return cfg
    try:
        return dataclasses.replace(cfg, distributed=dataclasses.replace(cfg.distributed, **changes))
    except ConfigError as e:
        raise ConfigError(f"--partition/--halo-hops: {e}") from None


def _open_run(run_dir: str | Path, ctx: DistContext, partition: str | None, halo_hops: int | None):
    """The run (model on this rank's device), its config with the overrides, and the step strategy."""
    device = ctx.device if ctx.world_size > 1 else resolve_device()
    run = run_agreed(lambda: load_run(run_dir, device))  # every rank reads the checkpoint
    cfg = _distributed_overrides(run.cfg, partition, halo_hops)
    strategy = make_strategy(ctx, cfg, run.fmap, next(run.model.parameters()).dtype, device)
    strategy.broadcast(run.model)
    return run, cfg, strategy


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None = None, split: str = "test",
                 plots: bool = True, echo: Callable[[str], None] = print, ctx: DistContext | None = None,
                 partition: str | None = None, halo_hops: int | None = None) -> dict | None:
    """Metrics of the trained model on ``split`` in physical units; writes ``RUN/metrics.json`` and field plots.

    In a process group of P > 1 ranks (``ctx``, default: the current one) every rank calls this function: each
    mesh is partitioned (``partition``/``halo_hops`` override the run's ``distributed`` config) and predicted on the
    full graph by all ranks together; rank 0 gathers, writes and returns the metrics (None on the other ranks).
    The metrics equal the single-process ones up to round-off.
    """
    ctx = current_context() if ctx is None else ctx
    run, cfg, strategy = _open_run(run_dir, ctx, partition, halo_hops)

    def open_dataset() -> Dataset:
        data = Dataset(data_dir if data_dir is not None else run.data_dir)
        man, trained = data.manifest, run.fmap.manifest
        if ([f.name for f in man.input_fields], [f.name for f in man.target_fields], man.dim) != (
                [f.name for f in trained.input_fields], [f.name for f in trained.target_fields], trained.dim):
            raise CheckpointError(
                f"{data.root}: dataset fields {[f.name for f in man.input_fields]} -> "
                f"{[f.name for f in man.target_fields]} (dim {man.dim}) differ from the run's "
                f"{[f.name for f in trained.input_fields]} -> {[f.name for f in trained.target_fields]} "
                f"(dim {trained.dim})")
        full = _full_graphs(cfg, ctx)
        check_split_graphs(data, data.split(split), cfg.graph, "evaluation on the full mesh" if full else
                           "evaluation on sampled graphs", None if full else cfg.graph.sample_nodes)
        return data

    data = strategy.agreed(open_dataset)
    man = data.manifest
    meshes = strategy.load(data, split, keep_full=True)
    strategy.graph_stats = GraphStats()
    preds = [strategy.predict(run.model, m) for m in meshes]  # None on ranks other than 0
    _warn_isolated(strategy, cfg, f"the {len(meshes)} meshes of split '{split}'")
    if not strategy.is_main:
        strategy.barrier()
        return None
    samples = [strategy.full(m) for m in meshes]
    names = [f.name for f in man.target_fields]
    metrics = {"split": split, "dataset": str(data.root), "epoch": run.epoch, "eval_mode": cfg.eval.mode,
               **compute_metrics(preds, [s.y for s in samples], names)}
    if ctx.world_size > 1:
        metrics["ranks"] = ctx.world_size
        metrics["partition"] = cfg.distributed.partition
    root = Path(run_dir)
    atomic_write_bytes(root / "metrics.json", json.dumps(metrics, indent=1).encode())
    if plots and man.dim in (2, 3):
        for k in range(min(cfg.eval.plot_samples, len(samples))):
            plot_fields(samples[k], preds[k], names, root / "plots" / f"{split}_{k:02d}_{samples[k].name}.png",
                        zoom=next((z for key, z in ZOOMS.items() if man.name.startswith(key)), None))
    rmse = ", ".join(f"{n} {v:.4g}" for n, v in metrics["rmse"].items())
    echo(f"{split}: {len(samples)} meshes, relative L2 {metrics['rel_l2']:.4f}, RMSE {rmse}")
    strategy.barrier()
    return metrics


def _full_graphs(cfg: Config, ctx: DistContext) -> bool:
    """Whether inference builds the radius graph of whole meshes (eval.mode full, or a METIS partition)."""
    return cfg.eval.mode == "full" or (ctx.world_size > 1 and cfg.distributed.partition == "metis")


def _warn_isolated(strategy, cfg: Config, graphs: str) -> None:
    """One warning (rank 0) when nodes of the graphs just predicted on had no neighbour; stop counting (a
    collective: every rank calls it)."""
    stats = strategy.take_graph_stats()
    message = stats.warning(cfg.graph.radius, graphs) if stats is not None else None
    if message and strategy.is_main:
        warnings.warn(message, stacklevel=3)


def read_mesh_input(path: Path, input_names: list[str], target_names: list[str]) -> MeshSample:
    """A mesh to predict on: a dsmpnn sample NPZ, or a VTU/VTK file whose point data holds the input fields
    (and, optionally, the target fields for comparison)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: input file does not exist")
    if path.suffix == ".npz":
        return read_sample_file(path)
    try:
        mesh = meshio.read(path)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read mesh ({type(e).__name__}: {e}); expected .npz, .vtu or .vtk") from None
    missing = [n for n in input_names if n not in mesh.point_data]
    if missing:
        raise DatasetError(f"{path}: point data lacks input field(s) {missing}; it has {sorted(mesh.point_data)}")
    col = lambda n: np.asarray(mesh.point_data[n], dtype=np.float64).reshape(len(mesh.points), -1)[:, 0]  # noqa: E731
    x = np.stack([col(n) for n in input_names], axis=1)
    y = np.stack([col(n) for n in target_names], axis=1) if all(n in mesh.point_data for n in target_names) else None
    dim = 3 if np.ptp(mesh.points[:, 2]) > 0 else 2
    block = mesh.cells[0] if mesh.cells else None
    return MeshSample(mesh.points[:, :dim], x, y, None if block is None else block.data,
                      None if block is None else block.type, name=path.stem)


def predict_file(run_dir: str | Path, input_path: str | Path, out_path: str | Path,
                 echo: Callable[[str], None] = print, ctx: DistContext | None = None, partition: str | None = None,
                 halo_hops: int | None = None) -> np.ndarray | None:
    """Predict the target fields of the mesh in ``input_path``; write ``out_path`` (.npz or .vtu) atomically.

    The output holds the predicted fields under their names and, when the input has targets, ``<name>_true`` and
    ``<name>_error`` (prediction - truth). In a process group of P > 1 ranks every rank calls this function and
    reads the input; the mesh is partitioned and predicted by all ranks together, rank 0 writes the file and
    returns the prediction (None on the other ranks).
    """
    out_path = Path(out_path)
    if out_path.suffix not in (".npz", ".vtu"):
        raise DatasetError(f"{out_path}: output must end in .npz or .vtu")
    ctx = current_context() if ctx is None else ctx
    run_agreed(lambda: check_output_path(out_path, "file", "--out"))
    run, cfg, strategy = _open_run(run_dir, ctx, partition, halo_hops)
    man = run.fmap.manifest
    inputs, targets = [f.name for f in man.input_fields], [f.name for f in man.target_fields]

    def read() -> MeshSample:
        sample = read_mesh_input(Path(input_path), inputs, targets)
        if sample.dim != man.dim or sample.x.shape[1] != len(inputs):
            raise DatasetError(f"{input_path}: mesh has dim {sample.dim} and {sample.x.shape[1]} input fields, the "
                               f"model expects dim {man.dim} and {inputs}")
        full = _full_graphs(cfg, ctx)
        check_graph_size(sample, cfg.graph.radius, cfg.graph.max_neighbors, cfg.graph.max_edges,
                         "prediction on the full mesh" if full else "prediction on sampled graphs",
                         None if full else cfg.graph.sample_nodes)
        return sample

    sample = strategy.agreed(read)
    strategy.graph_stats = GraphStats()
    pred = strategy.predict(run.model, strategy.hold(sample))
    _warn_isolated(strategy, cfg, f"mesh '{sample.name}'")
    if not strategy.is_main:
        strategy.barrier()
        return None
    fields = {n: pred[:, t] for t, n in enumerate(targets)}
    if sample.y is not None:
        for t, n in enumerate(targets):
            fields[f"{n}_true"] = sample.y[:, t]
            fields[f"{n}_error"] = pred[:, t] - sample.y[:, t]
    buf = io.BytesIO()
    if out_path.suffix == ".npz":
        np.savez(buf, pos=sample.pos, pred=pred, **fields)
    else:
        point_data = dict(fields)
        point_data.update({n: sample.x[:, k] for k, n in enumerate(inputs)})
        buf.write(vtu_bytes(sample, point_data, out_path))
    atomic_write_bytes(out_path, buf.getvalue())
    echo(f"wrote {out_path} ({sample.num_nodes} nodes, fields {list(fields)})")
    strategy.barrier()
    return pred


def vtu_bytes(sample: MeshSample, point_data: dict[str, np.ndarray], near: Path) -> bytes:
    """The VTU file of ``sample``'s mesh (its cells, or one vertex cell per node) with ``point_data``; written
    through a temporary file next to ``near`` (meshio writes files, not buffers)."""
    points = sample.pos if sample.dim == 3 else np.column_stack([sample.pos, np.zeros(sample.num_nodes)])
    cells = ([(sample.cell_type, sample.cells)] if sample.cells is not None
             else [("vertex", np.arange(sample.num_nodes)[:, None])])
    near.parent.mkdir(parents=True, exist_ok=True)
    tmp = near.with_name(f".{near.name}.{os.getpid()}.tmp.vtu")
    try:
        meshio.write(tmp, meshio.Mesh(points, cells, point_data=point_data))
        return tmp.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)
