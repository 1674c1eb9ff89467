"""Evaluate a trained run on a dataset split, and predict the fields of one mesh file (one process or P ranks)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from dsmpnn.data.dataset import Dataset, read_sample_file
from dsmpnn.data.meshfile import cell_blocks, point_scalar, read_mesh
from dsmpnn.data.paths import check_output_path
from dsmpnn.data.sample import CELL_NODES, MeshSample
from dsmpnn.data.untrusted import regular_file
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

__all__ = ["check_output_layout", "check_predict_paths", "evaluate_run", "npz_bytes", "predict_file",
           "read_mesh_input", "vtu_bytes"]

CellBlocks = list[tuple[str, np.ndarray]] | None
"""The cell blocks ``(type, cells [M, k])`` of a mesh read from a VTU/VTK file, kept for the predicted .vtu."""


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
    root = Path(run_dir)
    run_agreed(lambda: _check_evaluation_outputs(root, plots) if ctx.is_main else None)  # before any work
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
    atomic_write_bytes(root / "metrics.json", json.dumps(metrics, indent=1).encode())
    if plots and man.dim in (2, 3):
        for k in range(min(cfg.eval.plot_samples, len(samples))):
            plot_fields(samples[k], preds[k], names, root / "plots" / f"{split}_{k:02d}_{samples[k].name}.png",
                        zoom=next((z for key, z in ZOOMS.items() if man.name.startswith(key)), None))
    rmse = ", ".join(f"{n} {v:.4g}" for n, v in metrics["rmse"].items())
    echo(f"{split}: {len(samples)} meshes, relative L2 {metrics['rel_l2']:.4f}, RMSE {rmse}")
    strategy.barrier()
    return metrics


def _check_evaluation_outputs(root: Path, plots: bool) -> None:
    """Refuse a run directory where ``metrics.json`` (or, with ``plots``, the figures) cannot be written, before the
    model is loaded (a missing run directory is reported by the loader)."""
    if root.is_dir():
        check_output_path(root / "metrics.json", "file", "metrics.json (written by evaluate)")
        if plots:
            check_output_path(root / "plots" / "figure.png", "file", "the figures (--no-plots skips them)")


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


def read_mesh_input(path: Path, input_names: list[str], target_names: list[str]) -> tuple[MeshSample, CellBlocks]:
    """A mesh to predict on: a dsmpnn sample NPZ, or a VTU/VTK file whose point data holds the input fields
    (and, optionally, the target fields for comparison), each one value per node. Returns the sample and, for a
    VTU/VTK file, all its cell blocks (None for an NPZ: the sample's own cells)."""
    path = regular_file(path, "input file")
    if path.suffix == ".npz":
        return read_sample_file(path), None
    mesh = read_mesh(path, "input mesh", "expected .npz, .vtu or .vtk")
    missing = [n for n in input_names if n not in mesh.point_data]
    if missing:
        raise DatasetError(f"{path}: point data lacks input field(s) {missing}; it has {sorted(mesh.point_data)}")
    x = np.stack([point_scalar(path, mesh, n) for n in input_names], axis=1)
    has_targets = all(n in mesh.point_data for n in target_names)
    y = np.stack([point_scalar(path, mesh, n) for n in target_names], axis=1) if has_targets else None
    points = np.asarray(mesh.points, dtype=np.float64)
    dim = 3 if points.shape[1] == 3 and np.ptp(points[:, 2]) > 0 else 2
    blocks = cell_blocks(path, mesh)
    single = blocks[0] if len(blocks) == 1 and blocks[0][0] in CELL_NODES else (None, None)
    return MeshSample(points[:, :dim], x, y, single[1], single[0], name=path.stem), blocks


def predict_file(run_dir: str | Path, input_path: str | Path, out_path: str | Path,
                 echo: Callable[[str], None] = print, ctx: DistContext | None = None, partition: str | None = None,
                 halo_hops: int | None = None) -> np.ndarray | None:
    """Predict the target fields of the mesh in ``input_path``; write ``out_path`` (.npz or .vtu) atomically.

    The output holds the predicted fields under their names and, when the input has targets, ``<name>_true`` and
    ``<name>_error`` (prediction - truth); an .npz also ``pos`` and ``pred [N, T]``, a .vtu the input fields and
    every cell block of the input mesh. Field names that would clash in that layout, and an ``out_path`` that is
    the input file, are refused before the model runs. In a process group of P > 1 ranks every rank calls this
    function and reads the input; the mesh is partitioned and predicted by all ranks together, rank 0 writes the
    file and returns the prediction (None on the other ranks).
    """
    out_path = Path(out_path)
    if out_path.suffix not in (".npz", ".vtu"):
        raise DatasetError(f"{out_path}: output must end in .npz or .vtu")
    ctx = current_context() if ctx is None else ctx
    run_agreed(lambda: check_predict_paths(input_path, out_path))
    run, cfg, strategy = _open_run(run_dir, ctx, partition, halo_hops)
    man = run.fmap.manifest
    inputs, targets = [f.name for f in man.input_fields], [f.name for f in man.target_fields]
    strategy.agreed(lambda: check_output_layout(out_path, inputs, targets))

    def read() -> tuple[MeshSample, CellBlocks]:
        sample, blocks = read_mesh_input(Path(input_path), inputs, targets)
        if sample.dim != man.dim or sample.x.shape[1] != len(inputs):
            raise DatasetError(f"{input_path}: mesh has dim {sample.dim} and {sample.x.shape[1]} input fields, the "
                               f"model expects dim {man.dim} and {inputs}")
        full = _full_graphs(cfg, ctx)
        check_graph_size(sample, cfg.graph.radius, cfg.graph.max_neighbors, cfg.graph.max_edges,
                         "prediction on the full mesh" if full else "prediction on sampled graphs",
                         None if full else cfg.graph.sample_nodes)
        return sample, blocks

    sample, blocks = strategy.agreed(read)
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
    if out_path.suffix == ".npz":
        payload = npz_bytes({"pos": sample.pos, "pred": pred, **fields})
    else:
        point_data = dict(fields)
        point_data.update({n: sample.x[:, k] for k, n in enumerate(inputs)})
        payload = vtu_bytes(sample, point_data, out_path, blocks)
    atomic_write_bytes(out_path, payload)
    echo(f"wrote {out_path} ({sample.num_nodes} nodes, fields {list(fields)})")
    strategy.barrier()
    return pred


def check_predict_paths(input_path: str | Path, out_path: str | Path) -> None:
    """Refuse an ``out_path`` that cannot be created (:func:`check_output_path`) or that is the input file (after
    resolving symlinks, or a hard link to it): predict never overwrites its input."""
    src, dst = Path(input_path), check_output_path(out_path, "file", "--out")
    if src.resolve() == dst.resolve() or (src.exists() and dst.exists() and os.path.samefile(src, dst)):
        raise DatasetError(f"{dst}: --out is the --input file {src}; predict does not overwrite its input, choose "
                           "another --out")


def _output_keys(suffix: str, inputs: list[str], targets: list[str]) -> list[tuple[str, str]]:
    """(key, what it holds) of every array of a prediction file: an .npz or .vtu (point data) ``suffix``."""
    keys = [("pos", "the node positions"), ("pred", "the predictions [N, T]")] if suffix == ".npz" else []
    for n in targets:
        keys += [(n, f"the prediction of target field '{n}'"), (f"{n}_true", f"the true values of '{n}'"),
                 (f"{n}_error", f"the error of '{n}'")]
    if suffix == ".vtu":
        keys += [(n, f"input field '{n}'") for n in inputs]
    return keys


def _first_clash(suffix: str, inputs: list[str], targets: list[str]) -> tuple[str, str, str] | None:
    """(key, first meaning, second meaning) of the first key a prediction file would hold twice, or None."""
    seen: dict[str, str] = {}
    for key, what in _output_keys(suffix, inputs, targets):
        if key in seen:
            return key, seen[key], what
        seen[key] = what
    return None


def check_output_layout(out_path: str | Path, inputs: list[str], targets: list[str]) -> None:
    """Refuse field names that would give two arrays of the output file the same key (e.g. a target named 'pos'
    in an .npz), naming the key and suggesting the other format where it has no clash."""
    suffix = Path(out_path).suffix
    clash = _first_clash(suffix, inputs, targets)
    if clash is None:
        return
    other = ".vtu" if suffix == ".npz" else ".npz"
    hint = (f"write a {other} file instead" if _first_clash(other, inputs, targets) is None else
            "rename the field in the dataset manifest and train again")
    key, first, second = clash
    raise DatasetError(f"{out_path}: the output would hold the key {key!r} twice, for {first} and for {second}; "
                       f"{hint}")


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed NPZ archive of ``arrays`` (as ``numpy.savez`` writes, for any key: savez's own parameter
    names such as ``file`` cannot be keys of its ``**kwds``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for key, a in arrays.items():
            with z.open(f"{key}.npy", "w", force_zip64=True) as f:
                npy_format.write_array(f, np.asanyarray(a), allow_pickle=False)
    return buf.getvalue()


def vtu_bytes(sample: MeshSample, point_data: dict[str, np.ndarray], near: Path,
              blocks: CellBlocks = None) -> bytes:
    """The VTU file of a mesh with ``point_data``: its cell ``blocks`` when given, else ``sample``'s cells, else one
    vertex cell per node; written through a temporary file next to ``near`` (meshio writes files, not buffers)."""
    points = sample.pos if sample.dim == 3 else np.column_stack([sample.pos, np.zeros(sample.num_nodes)])
    cells = blocks or ([(sample.cell_type, sample.cells)] if sample.cells is not None
                       else [("vertex", np.arange(sample.num_nodes)[:, None])])
    import meshio  # noqa: PLC0415 - only .vtu output needs it (as dsmpnn.data.meshfile; images without meshio import dsmpnn)

    near.parent.mkdir(parents=True, exist_ok=True)
    tmp = near.with_name(f".{near.name}.{os.getpid()}.tmp.vtu")
    try:
        meshio.write(tmp, meshio.Mesh(points, cells, point_data=point_data))
        return tmp.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)
