"""The Python API: load a trained run and predict with it in your own loop or notebook; train from Python.

    import dsmpnn
    run = dsmpnn.load_run("runs/x")               # config, normalisation, model (on CPU, or device="cuda")
    y = run.predict(pos, x)                       # [N, d], [N, F] physical units -> [N, T] physical units
    result = run.predict_mesh("mesh.vtu")         # a mesh file or a MeshSample -> MeshPrediction
    run = dsmpnn.train("configs/darcy.yaml", "data/darcy", "runs/x", overrides=["train.epochs=5"])

Prediction goes through the code of ``dsmpnn predict`` (:class:`~dsmpnn.train.strategy.SingleProcess`,
:func:`~dsmpnn.train.inference.predict_sample`): the same graph (the run's ``graph`` config), the same ``eval.mode``,
the same size check before the graph is built, the same normalisation, so the result equals the command's to
round-off. Inputs are checked as files are (:class:`~dsmpnn.data.sample.MeshSample`: shapes, NaN/Inf, duplicate
nodes, coordinates; then the run's dimension and field counts, and values that normalise beyond the model dtype);
bad input raises a :class:`~dsmpnn.errors.DsmpnnError` whose message says what was expected.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dsmpnn.data.dataset import Manifest
from dsmpnn.data.sample import MeshSample
from dsmpnn.errors import ConfigError, DatasetError
from dsmpnn.messages import brief
from dsmpnn.train import rundir
from dsmpnn.train.config import Config, apply_overrides, load_config
from dsmpnn.train.evaluate import read_mesh_input
from dsmpnn.train.features import FeatureMap, GraphStats, check_graph_size
from dsmpnn.train.metrics import compute_metrics
from dsmpnn.train.strategy import SingleProcess

__all__ = ["MeshPrediction", "Run", "load_run", "train", "as_device"]

ArrayLike = Any  # a numpy array, a torch tensor (any device) or nested sequences of numbers


@dataclass(frozen=True)
class MeshPrediction:
    """The prediction of a run on one mesh.

    Attributes:
        sample: the mesh as read and checked (``pos [N, d]``, ``x [N, F]``, ``y [N, T]`` or None, cells).
        pred: ``[N, T]`` predicted target fields in physical units (float64), columns in ``target_names`` order.
        target_names: the run's target field names.
        metrics: when the mesh has the target fields: ``rmse`` (per field), ``rel_l2`` (relative L2 over all
            fields), ``rel_l2_per_field`` (per field), as ``dsmpnn evaluate`` computes them; else None.
        cell_blocks: every cell block ``(type, cells [M, k])`` of a VTU/VTK input (None otherwise), for writing
            the prediction back on the input mesh.
    """

    sample: MeshSample
    pred: np.ndarray
    target_names: tuple[str, ...]
    metrics: dict | None = None
    cell_blocks: list[tuple[str, np.ndarray]] | None = field(default=None, repr=False)

    @property
    def fields(self) -> dict[str, np.ndarray]:
        """``{name: [N]}``: each predicted field under its name."""
        return {n: self.pred[:, t] for t, n in enumerate(self.target_names)}

    @property
    def error(self) -> np.ndarray | None:
        """``[N, T]`` prediction - truth, or None when the mesh has no targets."""
        return None if self.sample.y is None else self.pred - self.sample.y


class Run:
    """A trained run, ready to predict: what :func:`load_run` and :func:`train` return.

    Attributes:
        path: the run directory.
        config: its :class:`~dsmpnn.train.config.Config` (``config.yaml``).
        manifest: the training dataset's manifest (field names, units, normalisation statistics).
        feature_map: the normalisation (:class:`~dsmpnn.train.features.FeatureMap`).
        model: the ``torch.nn.Module`` (eval mode, on ``device``, dtype ``config.train.dtype``); it maps normalised
            inputs to normalised targets, use :meth:`predict` for physical units.
        epoch: epochs done by the checkpoint loaded (the newest readable one).
        data_dir: the dataset the run was trained on.
        device, dtype: where the model lives and its floating point type.
    """

    def __init__(self, path: Path, loaded: rundir.LoadedRun, device: torch.device) -> None:
        self.path = Path(path)
        self.config: Config = loaded.cfg
        self.feature_map: FeatureMap = loaded.fmap
        self.model: nn.Module = loaded.model.eval()
        self.epoch: int = loaded.epoch
        self.data_dir: Path = loaded.data_dir
        self.device = device
        self.dtype: torch.dtype = next(self.model.parameters()).dtype

    @property
    def manifest(self) -> Manifest:
        return self.feature_map.manifest

    @property
    def dim(self) -> int:
        """d, the spatial dimension of the meshes the run was trained on."""
        return self.manifest.dim

    @property
    def input_names(self) -> list[str]:
        """The F input fields, in the order of the columns of ``x``."""
        return [f.name for f in self.manifest.input_fields]

    @property
    def target_names(self) -> list[str]:
        """The T target fields, in the order of the columns of the prediction."""
        return [f.name for f in self.manifest.target_fields]

    def __repr__(self) -> str:
        return (f"Run({str(self.path)!r}, epoch={self.epoch}, {self.input_names} -> {self.target_names}, "
                f"dim={self.dim}, model={self.config.model.kind}, device={self.device}, dtype={self.dtype})")

    def predict(self, pos: ArrayLike, x: ArrayLike) -> np.ndarray:
        """Predict the target fields on one mesh given as arrays.

        Args:
            pos: ``[N, d]`` node positions (d = the run's ``dim``), in the units of the training data.
            x: ``[N, F]`` input fields in physical units, columns in :attr:`input_names` order.

        Returns:
            ``[N, T]`` float64 numpy array: the target fields (:attr:`target_names` order) in physical units.

        Numpy arrays, torch tensors (any device) or nested lists. The mesh is checked as a dataset file is
        (shapes, finite values, no duplicate node positions) and against the run (d, F); a radius graph on the
        whole mesh (or, with ``eval.mode: sampled``, covering samples) is built as ``dsmpnn predict`` builds it.
        Raises :class:`~dsmpnn.errors.DatasetError` for bad input, :class:`~dsmpnn.errors.GraphError` when the
        graph would exceed ``graph.max_edges``.
        """
        sample = MeshSample(_numpy(pos, "pos"), _numpy(x, "x"), name="predict(pos, x)")
        return self._predict(sample)

    def predict_mesh(self, mesh: MeshSample | str | Path) -> MeshPrediction:
        """Predict the target fields of a mesh file or :class:`~dsmpnn.data.sample.MeshSample`.

        Args:
            mesh: a path that ``dsmpnn predict --input`` reads (a dsmpnn sample ``.npz``; a ``.vtu``/``.vtk`` whose
                point data holds the input fields by name, and optionally the targets), or a MeshSample with
                ``pos [N, d]``, ``x [N, F]`` and optionally ``y [N, T]``.

        Returns:
            a :class:`MeshPrediction`: ``pred [N, T]`` in physical units, ``fields`` by name, and ``metrics``
            (RMSE, relative L2) when the mesh has the target fields.
        """
        blocks = None
        if isinstance(mesh, MeshSample):
            sample = mesh
        elif isinstance(mesh, (str, Path)):
            sample, blocks = read_mesh_input(Path(mesh), self.input_names, self.target_names)
        else:
            raise DatasetError(f"predict_mesh: expected a MeshSample or the path of a mesh file, got "
                               f"{type(mesh).__name__}")
        if sample.y is not None and sample.y.shape[1] != len(self.target_names):
            raise DatasetError(f"sample '{sample.name}': field 'y' has shape {sample.y.shape}, expected "
                               f"[N, {len(self.target_names)}] for the run's target fields {self.target_names}")
        pred = self._predict(sample)
        names = tuple(self.target_names)
        metrics = None
        if sample.y is not None:
            metrics = {k: v for k, v in compute_metrics([pred], [sample.y], names).items()
                       if k not in ("n_samples", "rel_l2_per_sample")}  # one mesh
        return MeshPrediction(sample, pred, names, metrics, blocks)

    def _predict(self, sample: MeshSample) -> np.ndarray:
        """[N, T] physical prediction on ``sample`` by the code of ``dsmpnn predict`` (one process)."""
        where = f"sample '{sample.name}'"
        if sample.dim != self.dim:
            raise DatasetError(f"{where}: field 'pos' has shape {sample.pos.shape}, expected [N, {self.dim}]: the run "
                               f"was trained on {self.dim}D meshes")
        if sample.x.shape[1] != len(self.input_names):
            raise DatasetError(f"{where}: field 'x' has shape {sample.x.shape}, expected [N, {len(self.input_names)}] "
                               f"for the run's input fields {self.input_names}")
        cfg = self.config
        full = cfg.eval.mode == "full"
        check_graph_size(sample, cfg.graph.radius, cfg.graph.max_neighbors, cfg.graph.max_edges,
                         "prediction on the full mesh" if full else "prediction on sampled graphs",
                         None if full else cfg.graph.sample_nodes)
        self.feature_map.check(sample, self.dtype)  # values far outside the training statistics
        strategy = SingleProcess(cfg, self.feature_map, self.dtype, self.device)
        stats = GraphStats()
        pred = strategy.predict(self.model, sample, stats)
        message = stats.warning(cfg.graph.radius, f"mesh '{sample.name}'")
        if message:
            warnings.warn(message, stacklevel=3)
        return pred


def as_device(device: torch.device | str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:K"`` (or a torch.device) as a torch.device this machine has; a
    :class:`~dsmpnn.errors.ConfigError` otherwise."""
    if isinstance(device, torch.device):
        text = str(device)
    elif isinstance(device, str):
        text = device.strip()
    else:
        raise ConfigError(f"device is {brief(device)}, expected 'cpu', 'cuda' or 'cuda:K'")
    match = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", text)
    if match is None:
        raise ConfigError(f"device is {brief(device)}, expected 'cpu', 'cuda' or 'cuda:K'")
    if match.group(1) == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(match.group(2) or 0) >= count:
            raise ConfigError(f"device is {text!r}, but this machine has {count} CUDA device(s); use device='cpu'")
    return torch.device(text)


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> Run:
    """Load a run directory written by ``dsmpnn train`` (or :func:`train`) for prediction.

    Args:
        run_dir: the run directory (``--out`` of ``dsmpnn train``).
        device: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:K"``: where the model runs. The model's dtype is the
            run's ``train.dtype``.

    Returns:
        a :class:`Run` holding the config, the normalisation and the model of the newest readable checkpoint.
        Raises :class:`~dsmpnn.errors.CheckpointError` when ``run_dir`` is not a run or has no usable checkpoint.
    """
    dev = as_device(device)
    return Run(Path(run_dir), rundir.load_run(run_dir, dev), dev)


def _numpy(a: ArrayLike, name: str) -> np.ndarray:
    """``a`` as a numpy array (a torch tensor is detached and copied to the CPU first)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        if a.dtype in (torch.float16, torch.bfloat16):
            a = a.double()
        return a.numpy()
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as e:
        raise DatasetError(f"sample 'predict(pos, x)': field '{name}' is not an array of numbers ({e})") from None


def train(config: Config | Mapping | str | Path | None, data_dir: str | Path, out_dir: str | Path,
          overrides: Sequence[str] = (), *, resume: bool = False, progress: bool = False, echo=print,
          device: torch.device | str = "cpu") -> Run:
    """Train a model from Python, as ``dsmpnn train --config CONFIG --data DATA_DIR --out OUT_DIR OVERRIDES`` does.

    Args:
        config: a :class:`~dsmpnn.train.config.Config`, a dict of sections (``{"train": {"epochs": 5}, ...}``),
            the path of a YAML config file, or None for the defaults.
        data_dir: a dataset directory (``dsmpnn generate`` / ``dsmpnn import``).
        out_dir: the run directory to write (new or empty, or an existing run with ``resume=True``).
        overrides: ``"section.key=value"`` strings applied on top of ``config``, as on the command line.
        resume: continue the run in ``out_dir`` from its newest checkpoint (``--resume``).
        progress: show progress bars; echo: where the one-line messages go (``print``; ``lambda s: None`` is quiet).
        device: where the returned run's model is loaded (training itself uses CUDA when available, as the CLI).

    Returns:
        the trained :class:`Run` (its newest checkpoint), ready to :meth:`Run.predict`.
        Bad config, data or run directory raise :class:`~dsmpnn.errors.DsmpnnError` subclasses before anything
        is written; a diverging loss :class:`~dsmpnn.errors.TrainingDiverged`.
    """
    from dsmpnn.train.trainer import train as train_loop  # noqa: PLC0415 - the trainer is the heavy part

    cfg = _config(config, list(overrides))
    dev = as_device(device)  # refuse a device that does not exist before training
    train_loop(cfg, data_dir, out_dir, resume=resume, progress=progress, echo=echo)
    return load_run(out_dir, dev)


def _config(config: Config | Mapping | str | Path | None, overrides: list[str]) -> Config:
    if isinstance(config, Config):
        return Config.from_dict(apply_overrides(config.to_dict(), overrides), "config") if overrides else config
    if isinstance(config, Mapping):
        return Config.from_dict(apply_overrides(dict(config), overrides), "config")
    if config is None or isinstance(config, (str, Path)):
        return load_config(config, overrides)
    raise ConfigError(f"config is a {type(config).__name__}, expected a Config, a dict of sections, the path of a "
                      "YAML file or None")
