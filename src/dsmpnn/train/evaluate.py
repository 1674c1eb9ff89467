"""Evaluate a trained run on a dataset split, and predict the fields of one mesh file."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import meshio
import numpy as np

from dsmpnn.data.dataset import Dataset, read_sample_file
from dsmpnn.data.sample import MeshSample
from dsmpnn.errors import CheckpointError, DatasetError
from dsmpnn.train.checkpoint import atomic_write_bytes
from dsmpnn.train.inference import predict_sample
from dsmpnn.train.metrics import compute_metrics
from dsmpnn.train.plots import plot_fields
from dsmpnn.train.rundir import load_run
from dsmpnn.train.trainer import resolve_device

__all__ = ["evaluate_run", "predict_file", "read_mesh_input"]


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None = None, split: str = "test",
                 plots: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Metrics of the trained model on ``split`` in physical units; writes ``RUN/metrics.json`` and field plots."""
    device = resolve_device()
    run = load_run(run_dir, device)
    data = Dataset(data_dir if data_dir is not None else run.data_dir)
    man, trained = data.manifest, run.fmap.manifest
    if ([f.name for f in man.input_fields], [f.name for f in man.target_fields], man.dim) != (
            [f.name for f in trained.input_fields], [f.name for f in trained.target_fields], trained.dim):
        raise CheckpointError(
            f"{data.root}: dataset fields {[f.name for f in man.input_fields]} -> {[f.name for f in man.target_fields]} "
            f"(dim {man.dim}) differ from the run's {[f.name for f in trained.input_fields]} -> "
            f"{[f.name for f in trained.target_fields]} (dim {trained.dim})")
    samples = data.load_split(split)
    names = [f.name for f in man.target_fields]
    preds = [predict_sample(run.model, run.fmap, s, run.cfg, device) for s in samples]
    metrics = {"split": split, "dataset": str(data.root), "epoch": run.epoch, "eval_mode": run.cfg.eval.mode,
               **compute_metrics(preds, [s.y for s in samples], names)}
    root = Path(run_dir)
    atomic_write_bytes(root / "metrics.json", json.dumps(metrics, indent=1).encode())
    if plots and man.dim in (2, 3):
        for k in range(min(run.cfg.eval.plot_samples, len(samples))):
            plot_fields(samples[k], preds[k], names, root / "plots" / f"{split}_{k:02d}_{samples[k].name}.png")
    rmse = ", ".join(f"{n} {v:.4g}" for n, v in metrics["rmse"].items())
    echo(f"{split}: {len(samples)} meshes, relative L2 {metrics['rel_l2']:.4f}, RMSE {rmse}")
    return metrics


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
                 echo: Callable[[str], None] = print) -> np.ndarray:
    """Predict the target fields of the mesh in ``input_path``; write ``out_path`` (.npz or .vtu) atomically.

    The output holds the predicted fields under their names and, when the input has targets, ``<name>_true`` and
    ``<name>_error`` (prediction - truth).
    """
    out_path = Path(out_path)
    if out_path.suffix not in (".npz", ".vtu"):
        raise DatasetError(f"{out_path}: output must end in .npz or .vtu")
    device = resolve_device()
    run = load_run(run_dir, device)
    man = run.fmap.manifest
    inputs, targets = [f.name for f in man.input_fields], [f.name for f in man.target_fields]
    sample = read_mesh_input(Path(input_path), inputs, targets)
    if sample.dim != man.dim or sample.x.shape[1] != len(inputs):
        raise DatasetError(f"{input_path}: mesh has dim {sample.dim} and {sample.x.shape[1]} input fields, the model "
                           f"expects dim {man.dim} and {inputs}")
    pred = predict_sample(run.model, run.fmap, sample, run.cfg, device)
    fields = {n: pred[:, t] for t, n in enumerate(targets)}
    if sample.y is not None:
        for t, n in enumerate(targets):
            fields[f"{n}_true"] = sample.y[:, t]
            fields[f"{n}_error"] = pred[:, t] - sample.y[:, t]
    buf = io.BytesIO()
    if out_path.suffix == ".npz":
        np.savez(buf, pos=sample.pos, pred=pred, **fields)
    else:
        points = sample.pos if sample.dim == 3 else np.column_stack([sample.pos, np.zeros(sample.num_nodes)])
        cells = [(sample.cell_type, sample.cells)] if sample.cells is not None else [("vertex", np.arange(sample.num_nodes)[:, None])]
        point_data = dict(fields)
        point_data.update({n: sample.x[:, k] for k, n in enumerate(inputs)})
        tmp = out_path.with_name(f".{out_path.name}.tmp.vtu")
        meshio.write(tmp, meshio.Mesh(points, cells, point_data=point_data))
        buf.write(tmp.read_bytes())
        tmp.unlink()
    atomic_write_bytes(out_path, buf.getvalue())
    echo(f"wrote {out_path} ({sample.num_nodes} nodes, fields {list(fields)})")
    return pred
