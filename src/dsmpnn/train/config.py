"""Typed run configuration, loaded from YAML and validated (unknown keys and wrong types are errors).

A config has five sections; every key has a default, so a YAML file lists only what it changes::

    model:  {hidden: 32, layers: 4, kernel_hidden: [64], aggr: mean, act: gelu, ...}
    graph:  {radius: 0.06, sample_nodes: 1024, samples_per_mesh: 4, max_neighbors: null}
    train:  {epochs: 100, batch_graphs: 4, lr: 1e-3, scheduler: cosine, seed: 0, ...}
    eval:   {mode: full, samples: 8, plot_samples: 3}
    distributed: {partition: metis, halo_hops: 1, timeout_s: 300, overlap: null}   # used on P > 1 ranks

Command-line overrides use dotted keys: ``train.epochs=5 model.hidden=16 graph.max_neighbors=null``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from dsmpnn.errors import ConfigError
from dsmpnn.graph.partition import DEFAULT_PARTITION_METHOD, PARTITION_METHODS
from dsmpnn.graph.radius import DEFAULT_MAX_EDGES

__all__ = ["ModelConfig", "GraphConfig", "TrainConfig", "EvalConfig", "DistributedConfig", "Config", "load_config",
           "apply_overrides"]


@dataclass
class ModelConfig:
    """The MPNN: encoder MLP -> ``layers`` edge-conditioned convolutions -> decoder MLP.

    ``kind: gcn`` swaps the convolutions for GCNConv (:class:`dsmpnn.nn.GCN`, single process only) of width
    ``gcn_hidden``; null picks the width whose parameter count is closest to the MPNN of the same config.
    ``checkpoint_layers``: recompute each processor layer in backward instead of storing its activations
    (``torch.utils.checkpoint``; same results, less memory on big graphs, about one more forward per step).
    """

    kind: str = "mpnn"
    hidden: int = 32
    layers: int = 4
    kernel_hidden: list[int] = field(default_factory=lambda: [64])
    encoder_hidden: list[int] = field(default_factory=lambda: [64])
    decoder_hidden: list[int] = field(default_factory=lambda: [64])
    aggr: str = "mean"
    act: str = "gelu"
    residual: bool = True
    layer_norm: bool = False
    use_pos: bool = True
    gcn_hidden: int | None = None
    checkpoint_layers: bool = False

    def __post_init__(self) -> None:
        _choice("model.kind", self.kind, ("mpnn", "gcn"))
        _choice("model.aggr", self.aggr, ("mean", "sum"))
        _choice("model.act", self.act, ("relu", "gelu", "silu", "tanh", "elu"))
        _positive("model.hidden", self.hidden)
        _positive("model.layers", self.layers)
        if self.gcn_hidden is not None:
            _positive("model.gcn_hidden", self.gcn_hidden)
        for name in ("kernel_hidden", "encoder_hidden", "decoder_hidden"):
            for v in getattr(self, name):
                _positive(f"model.{name}", v)
        if not self.kernel_hidden:
            raise ConfigError("model.kernel_hidden must list at least one hidden size, e.g. [64]")


@dataclass
class GraphConfig:
    """Radius graph and Nyström sampling (radius in the mesh's length unit).

    ``max_edges``: a graph estimated to have more edges is refused before it is built (a radius too large for the
    mesh would otherwise exhaust memory).
    """

    radius: float = 0.1
    max_neighbors: int | None = None
    sample_nodes: int = 1024
    samples_per_mesh: int = 2
    max_edges: int = DEFAULT_MAX_EDGES

    def __post_init__(self) -> None:
        if not (self.radius > 0 and math.isfinite(self.radius)):
            raise ConfigError(f"graph.radius must be > 0 and finite, got {self.radius}")
        _positive("graph.max_edges", self.max_edges)
        _positive("graph.sample_nodes", self.sample_nodes)
        _positive("graph.samples_per_mesh", self.samples_per_mesh)
        if self.max_neighbors is not None:
            _positive("graph.max_neighbors", self.max_neighbors)


@dataclass
class TrainConfig:
    """Optimisation: Adam on the MSE of normalised targets over sampled graphs."""

    epochs: int = 50
    batch_graphs: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    min_lr_ratio: float = 0.01
    grad_clip: float | None = None
    seed: int = 0
    dtype: str = "float32"
    threads: int | None = None
    eval_every: int = 10
    checkpoint_every: int = 5
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        _positive("train.epochs", self.epochs)
        _positive("train.batch_graphs", self.batch_graphs)
        _positive("train.checkpoint_every", self.checkpoint_every)
        _positive("train.keep_checkpoints", self.keep_checkpoints)
        _positive("train.eval_every", self.eval_every)
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        _choice("train.scheduler", self.scheduler, ("cosine", "constant", "step"))
        _choice("train.dtype", self.dtype, ("float32", "float64"))
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class EvalConfig:
    """Evaluation: on the full mesh graph, or the mean of ``samples`` sampled predictions covering every node."""

    mode: str = "full"
    samples: int = 8
    plot_samples: int = 3

    def __post_init__(self) -> None:
        _choice("eval.mode", self.mode, ("full", "sampled"))
        _positive("eval.samples", self.samples)


@dataclass
class DistributedConfig:
    """Domain decomposition over P ranks (``dsmpnn train --nproc P`` or torchrun); ignored by one process.

    ``partition``: how each mesh is split (slab / rcb / metis, see :mod:`dsmpnn.graph.partition`);
    ``halo_hops``: halo width in graph hops, the halo exchange runs before every ``halo_hops``-th layer;
    ``timeout_s``: seconds a collective waits for the other ranks before the run fails;
    ``overlap``: null = the exact graph halo (``halo_hops``); a distance l (mesh length unit) = the paper's
    geometric overlap, halo = nodes within l of a subdomain, exchange before every layer. l >= graph.radius is
    exact; l < radius drops edges, so the run differs from one process (a warning says so).
    """

    partition: str = DEFAULT_PARTITION_METHOD
    halo_hops: int = 1
    timeout_s: float = 300.0
    overlap: float | None = None

    def __post_init__(self) -> None:
        _choice("distributed.partition", self.partition, PARTITION_METHODS)
        _positive("distributed.halo_hops", self.halo_hops)
        if not self.timeout_s > 0:
            raise ConfigError(f"distributed.timeout_s must be > 0 seconds, got {self.timeout_s}")
        if self.overlap is not None:
            if not (self.overlap >= 0 and math.isfinite(self.overlap)):
                raise ConfigError(f"distributed.overlap must be a finite distance >= 0 or null, got {self.overlap}")
            if self.halo_hops != 1:
                raise ConfigError(f"distributed.overlap ({self.overlap:g}) and distributed.halo_hops "
                                  f"({self.halo_hops}) exclude each other: the geometric overlap exchanges before "
                                  "every layer; set halo_hops to 1 or overlap to null")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def __post_init__(self) -> None:
        ov, r = self.distributed.overlap, self.graph.radius
        if ov is not None and ov < r:
            warnings.warn(f"distributed.overlap {ov:g} < graph.radius {r:g}: on P > 1 ranks the edges whose source "
                          "lies outside the overlap are dropped, so DS-MPNN differs from one process "
                          "(overlap >= radius is exact)", stacklevel=2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(obj: Any, where: str = "config") -> "Config":
        return _build(Config, obj, where, "")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, graph, train, eval, distributed), "
                              f"got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    return Config.from_dict(raw, where)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of ``raw`` with each ``section.key=value`` set (value parsed as YAML)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value, e.g. train.epochs=10")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"override '{item}': key must be section.key (e.g. model.hidden), got '{key}'")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        section = out.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"override '{item}': '{parts[0]}' is not a section")
        section[parts[1]] = parsed
    return out


def _build(cls: type, obj: Any, where: str, section: str) -> Any:
    if obj is None:
        obj = {}
    what = f"section '{section}'" if section else "the top level"
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: {what} must be a mapping, got {type(obj).__name__} {obj!r:.40}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} in {what}; valid keys are {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in obj.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, where, name)
        else:
            try:
                kwargs[name] = _check_type(value, hint, f"{section}.{name}")
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for h in args:
            try:
                return _check_type(value, h, where)
            except ConfigError:
                pass
        names = " or ".join("null" if h is type(None) else getattr(h, "__name__", str(h)) for h in args)
        raise ConfigError(f"{where} is {type(value).__name__} {value!r}, expected {names}")
    if hint is type(None):
        raise ConfigError(f"{where} is {value!r}, expected null")
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where} is {type(value).__name__} {value!r}, expected a list of {inner.__name__}")
        return [_check_type(v, inner, where) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 as a string
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where} is {type(value).__name__} {value!r}, expected {hint.__name__}")
    return value


def _positive(name: str, v: int) -> None:
    if v <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {v}")


def _choice(name: str, v: str, options: tuple[str, ...]) -> None:
    if v not in options:
        raise ConfigError(f"{name} is {v!r}, expected one of {list(options)}")
