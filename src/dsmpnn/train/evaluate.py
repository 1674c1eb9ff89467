"""Evaluate a trained run on a dataset split, and predict the fields of one mesh file (one process or P ranks)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from dsmpnn.data.dataset import Dataset, read_sample_file
from dsmpnn.data.mesh_import import XDMF_SUFFIXES, count_steps, mesh_dim, read_steps, resolve_columns, step_values
from dsmpnn.data.paths import check_output_path
from dsmpnn.data.sample import MeshSample, sample_from_blocks
from dsmpnn.data.untrusted import regular_file
from dsmpnn.distributed import DistContext, current_context, run_agreed
from dsmpnn.errors import CheckpointError, ConfigError, DatasetError
from dsmpnn.messages import brief
from dsmpnn.resources import peak_rss
from dsmpnn.train.checkpoint import atomic_write_bytes
from dsmpnn.train.config import Config
from dsmpnn.train.features import GraphStats, check_graph_size, check_split_graphs
from dsmpnn.train.metrics import compute_metrics
from dsmpnn.train.plots import ZOOMS, plot_fields
from dsmpnn.train.rundir import load_run
from dsmpnn.train.strategy import make_strategy
from dsmpnn.train.trainer import resolve_device

__all__ = ["check_output_layout", "check_predict_paths", "check_xdmf_blocks", "evaluate_run", "npz_bytes",
           "predict_file", "read_mesh_input", "vtu_bytes", "write_xdmf"]

CellBlocks = list[tuple[str, np.ndarray]] | None
"""The cell blocks ``(type, cells [M, k])`` of a mesh read from a mesh file, kept for the predicted .vtu/.xdmf."""

OUTPUT_SUFFIXES = (".npz", ".vtu", ".xdmf")


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
    stats = GraphStats()
    preds = [strategy.predict(run.model, m, stats) for m in meshes]  # None on ranks other than 0
    _warn_isolated(strategy, cfg, stats, f"the {len(meshes)} meshes of split '{split}'")
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


def _warn_isolated(strategy, cfg: Config, stats: GraphStats, graphs: str) -> None:
    """One warning (rank 0) when nodes of the graphs just predicted on (counted in ``stats``) had no neighbour (a
    collective: every rank calls it)."""
    message = strategy.total_graph_stats(stats).warning(cfg.graph.radius, graphs)
    if message and strategy.is_main:
        warnings.warn(message, stacklevel=3)


def read_mesh_input(path: Path, input_names: list[str], target_names: list[str], step: int | None = None,
                    cell_data: str = "refuse") -> tuple[MeshSample, CellBlocks]:
    """A mesh to predict on: a dsmpnn sample NPZ, or any mesh file meshio reads (``.vtu``, ``.vtk``, ``.msh``,
    ``.xdmf`` ...) whose point data holds the input fields (and, optionally, the target fields for comparison),
    named as in the dataset: a scalar field, or one component of a vector/tensor field (``U_x`` is component x of
    ``U``; see :mod:`dsmpnn.data.mesh_import`). Cell data is refused, or averaged onto the nodes with
    ``cell_data="average"``. An XDMF time series needs ``step`` (which step) unless it has one. Returns the sample
    and, for a mesh file, all its cell blocks (None for an NPZ: the sample's own cells)."""
    path = regular_file(path, "input file")
    if path.suffix == ".npz":
        return read_sample_file(path), None
    steps = count_steps(path) if path.suffix.lower() in XDMF_SUFFIXES else 1
    if step is not None and not 0 <= step < steps:
        raise DatasetError(f"{path}: --step is {step}, but the file has {steps} step(s) (0 to {steps - 1})")
    if step is None and steps > 1:
        raise DatasetError(f"{path}: the file is a time series of {steps} steps; choose one with --step K "
                           f"(0 to {steps - 1})")
    mesh = next(read_steps(path, "input mesh", None if steps == 1 else [step or 0]))
    dim = mesh_dim(mesh.points)
    inputs = [_one_column(mesh, n, dim, cell_data, "input") for n in input_names]
    tails = {c.field: tuple(np.shape(mesh.point_data[c.field])[1:]) if c.field in mesh.point_data else
             tuple(np.shape(mesh.cell_data[c.field][0])[1:]) for c in inputs}
    x = step_values(mesh, inputs, tails, mesh.label)
    try:
        targets = [_one_column(mesh, n, dim, cell_data, "target") for n in target_names]
    except DatasetError:
        targets = None  # no (usable) targets: nothing to compare with
    y = None
    if targets is not None:
        tails.update({c.field: tuple(np.shape(mesh.point_data[c.field])[1:]) if c.field in mesh.point_data else
                      tuple(np.shape(mesh.cell_data[c.field][0])[1:]) for c in targets})
        y = step_values(mesh, targets, tails, mesh.label)
    pos = np.asarray(mesh.points, dtype=np.float64)[:, :dim]
    try:  # the sample carries the cells when dsmpnn knows their types (for plots); the output keeps every block
        sample = sample_from_blocks(pos, x, y, mesh.blocks, name=path.stem)
    except DatasetError:
        sample = MeshSample(pos, x, y, name=path.stem)
    return sample, mesh.blocks


def _one_column(mesh, name: str, dim: int, cell_data: str, role: str):  # noqa: ANN001, ANN202
    """The one column the model's field ``name`` is in ``mesh``: a scalar field, or a component ``<field>_<c>``."""
    data = mesh.point_data
    if name in data and np.ndim(data[name]) > 1 and np.prod(np.shape(data[name])[1:]) != 1:
        n = mesh.num_nodes
        raise DatasetError(f"{mesh.label}: point data {brief(name)} has shape {np.shape(data[name])}, expected [{n}] "
                           f"or [{n}, 1] (one value per node): the model's {role} field {brief(name)} is a scalar")
    columns = resolve_columns([name], mesh, dim, cell_data, f"the model's {role} field")
    return columns[0]


def predict_file(run_dir: str | Path, input_path: str | Path, out_path: str | Path,
                 echo: Callable[[str], None] = print, ctx: DistContext | None = None, partition: str | None = None,
                 halo_hops: int | None = None, step: int | None = None,
                 cell_data: str = "refuse") -> np.ndarray | None:
    """Predict the target fields of the mesh in ``input_path``; write ``out_path`` (.npz, .vtu or .xdmf + .h5)
    atomically.

    The output holds the predicted fields under their names and, when the input has targets, ``<name>_true`` and
    ``<name>_error`` (prediction - truth); an .npz also ``pos`` and ``pred [N, T]``, a .vtu/.xdmf the input fields
    and every cell block of the input mesh. ``step`` picks the step of an XDMF time series, ``cell_data``
    ("refuse" or "average") what is done with input fields given per cell. Field names that would clash in that
    layout, and an ``out_path`` that is the input file, are refused before the model runs. In a process group of
    P > 1 ranks every rank calls this function and reads the input; the mesh is partitioned and predicted by all
    ranks together, rank 0 writes the file and returns the prediction (None on the other ranks). Last, rank 0
    echoes the peak resident memory of every rank (``peak memory per rank [GiB]: ...``), for sizing runs.
    """
    out_path = Path(out_path)
    if out_path.suffix not in OUTPUT_SUFFIXES:
        raise DatasetError(f"{out_path}: output must end in .npz, .vtu or .xdmf")
    ctx = current_context() if ctx is None else ctx
    run_agreed(lambda: check_predict_paths(input_path, out_path))
    run, cfg, strategy = _open_run(run_dir, ctx, partition, halo_hops)
    man = run.fmap.manifest
    inputs, targets = [f.name for f in man.input_fields], [f.name for f in man.target_fields]
    strategy.agreed(lambda: check_output_layout(out_path, inputs, targets))

    def read() -> tuple[MeshSample, CellBlocks]:
        sample, blocks = read_mesh_input(Path(input_path), inputs, targets, step, cell_data)
        if sample.dim != man.dim or sample.x.shape[1] != len(inputs):
            raise DatasetError(f"{input_path}: mesh has dim {sample.dim} and {sample.x.shape[1]} input fields, the "
                               f"model expects dim {man.dim} and {inputs}")
        full = _full_graphs(cfg, ctx)
        check_graph_size(sample, cfg.graph.radius, cfg.graph.max_neighbors, cfg.graph.max_edges,
                         "prediction on the full mesh" if full else "prediction on sampled graphs",
                         None if full else cfg.graph.sample_nodes)
        if out_path.suffix == ".xdmf":
            check_xdmf_blocks(out_path, blocks if blocks is not None else sample.cell_blocks)
        return sample, blocks

    t0 = time.perf_counter()
    sample, blocks = strategy.agreed(read)
    t_read = time.perf_counter()
    if strategy.is_main:  # what the (possibly minutes long) wait is for
        graph = "the full radius graph" if cfg.eval.mode == "full" else f"{cfg.eval.samples} sampled graphs"
        ranks = f"{ctx.world_size} ranks" if ctx.world_size > 1 else "one process"
        echo(f"read {input_path} in {t_read - t0:.1f} s: {sample.num_nodes} nodes; predicting on {graph} "
             f"(radius {cfg.graph.radius:g}), {ranks}")
        sys.stdout.flush()
    stats = GraphStats()
    pred = strategy.predict(run.model, strategy.hold(sample), stats)
    _warn_isolated(strategy, cfg, stats, f"mesh '{sample.name}'")
    t_pred = time.perf_counter()
    written = _write_prediction(sample, blocks, pred, inputs, targets, out_path) if strategy.is_main else []
    peaks = strategy.gather_objects(peak_rss())  # after the write: also waits for rank 0 to finish it
    if not strategy.is_main:
        return None
    echo(f"wrote {out_path} ({sample.num_nodes} nodes, fields {written}); seconds: read {t_read - t0:.1f}, "
         f"graph + model {t_pred - t_read:.1f}, write {time.perf_counter() - t_pred:.1f}")
    echo("peak memory per rank [GiB]: " + ", ".join(f"{p / 2**30:.2f}" for p in peaks))
    return pred


def _write_prediction(sample: MeshSample, blocks: CellBlocks, pred: np.ndarray, inputs: list[str],
                      targets: list[str], out_path: Path) -> list[str]:
    """Write ``pred [N, T]`` (and, where ``sample`` has targets, ``<name>_true``/``<name>_error``) to ``out_path``
    in the layout :func:`predict_file` describes; returns the names of the fields written."""
    fields = {n: pred[:, t] for t, n in enumerate(targets)}
    if sample.y is not None:
        for t, n in enumerate(targets):
            fields[f"{n}_true"] = sample.y[:, t]
            fields[f"{n}_error"] = pred[:, t] - sample.y[:, t]
    point_data = dict(fields)
    point_data.update({n: sample.x[:, k] for k, n in enumerate(inputs)})
    if out_path.suffix == ".npz":
        atomic_write_bytes(out_path, npz_bytes({"pos": sample.pos, "pred": pred, **fields}))
    elif out_path.suffix == ".xdmf":
        write_xdmf(sample, point_data, out_path, blocks)
    else:
        atomic_write_bytes(out_path, vtu_bytes(sample, point_data, out_path, blocks))
    return list(fields)


def check_predict_paths(input_path: str | Path, out_path: str | Path) -> None:
    """Refuse an ``out_path`` that cannot be created (:func:`check_output_path`) or that is the input file (after
    resolving symlinks, or a hard link to it): predict never overwrites its input."""
    src, dst = Path(input_path), check_output_path(out_path, "file", "--out")
    if src.resolve() == dst.resolve() or (src.exists() and dst.exists() and os.path.samefile(src, dst)):
        raise DatasetError(f"{dst}: --out is the --input file {src}; predict does not overwrite its input, choose "
                           "another --out")
    if dst.suffix == ".xdmf":  # the heavy data goes to the .h5 beside it, which must not be the input's either
        h5 = check_output_path(dst.with_suffix(".h5"), "file", "the .h5 file beside --out")
        if src.resolve() == h5.resolve() or (src.suffix.lower() in XDMF_SUFFIXES
                                            and src.with_suffix(".h5").resolve() == h5.resolve()):
            raise DatasetError(f"{h5}: --out {dst} writes its data to {h5.name}, a file of the input {src}; choose "
                               "another --out")


def _output_keys(suffix: str, inputs: list[str], targets: list[str]) -> list[tuple[str, str]]:
    """(key, what it holds) of every array of a prediction file: an .npz or .vtu (point data) ``suffix``."""
    keys = [("pos", "the node positions"), ("pred", "the predictions [N, T]")] if suffix == ".npz" else []
    for n in targets:
        keys += [(n, f"the prediction of target field '{n}'"), (f"{n}_true", f"the true values of '{n}'"),
                 (f"{n}_error", f"the error of '{n}'")]
    if suffix != ".npz":  # .vtu, .xdmf: the input fields are point data too
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


def _meshio_mesh(sample: MeshSample, point_data: dict[str, np.ndarray], blocks: CellBlocks = None):
    """The ``meshio.Mesh`` of ``sample`` with ``point_data``: 3D points (z = 0 for a 2D mesh) and the cell
    ``blocks`` when given, else the sample's own, else one vertex cell per node."""
    import meshio  # noqa: PLC0415 - see vtu_bytes

    points = sample.pos if sample.dim == 3 else np.column_stack([sample.pos, np.zeros(sample.num_nodes)])
    cells = blocks or sample.cell_blocks or [("vertex", np.arange(sample.num_nodes)[:, None])]
    return meshio.Mesh(points, cells, point_data=point_data)


def vtu_bytes(sample: MeshSample, point_data: dict[str, np.ndarray], near: Path,
              blocks: CellBlocks = None) -> bytes:
    """The VTU file of a mesh with ``point_data``: its cell ``blocks`` when given, else ``sample``'s cells, else one
    vertex cell per node; written through a temporary file next to ``near`` (meshio writes files, not buffers)."""
    import meshio  # noqa: PLC0415 - only mesh output needs it (as dsmpnn.data.meshfile; images without meshio import dsmpnn)

    near.parent.mkdir(parents=True, exist_ok=True)
    tmp = near.with_name(f".{near.name}.{os.getpid()}.tmp.vtu")
    try:
        meshio.write(tmp, _meshio_mesh(sample, point_data, blocks))
        return tmp.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)


def check_xdmf_blocks(out_path: Path, blocks: list[tuple[str, np.ndarray]]) -> None:
    """Refuse, before the model runs, cell types meshio's XDMF writer cannot write."""
    from meshio.xdmf.common import meshio_to_xdmf_type

    bad = sorted({kind for kind, _ in blocks if kind not in meshio_to_xdmf_type})
    if bad:
        raise DatasetError(f"{out_path}: XDMF cannot hold cells of type {', '.join(bad)}; write a .vtu instead")


def write_xdmf(sample: MeshSample, point_data: dict[str, np.ndarray], out_path: Path,
               blocks: CellBlocks = None) -> None:
    """Write the mesh (cell ``blocks``, else ``sample``'s cells, else vertices) with ``point_data`` as ``out_path``
    (XDMF 3) and its heavy data as the ``.h5`` beside it. Both are written in a temporary folder next to them and
    renamed into place (the .h5 first), so a reader never sees a half-written file."""
    import shutil
    import tempfile

    import meshio  # noqa: PLC0415 - as in vtu_bytes

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent))
    try:
        meshio.write(tmp / out_path.name, _meshio_mesh(sample, point_data, blocks), file_format="xdmf")
        os.replace(tmp / out_path.with_suffix(".h5").name, out_path.with_suffix(".h5"))
        os.replace(tmp / out_path.name, out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
