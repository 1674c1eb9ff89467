"""Typed run configuration, loaded from YAML and validated (unknown keys and wrong types are errors).

A config has five sections; every key has a default, so a YAML file lists only what it changes::

    model:  {hidden: 32, layers: 4, kernel_hidden: [64], aggr: mean, act: gelu, ...}
    graph:  {radius: 0.06, sample_nodes: 1024, samples_per_mesh: 4, max_neighbors: null, edge_features: geometry}
    train:  {epochs: 100, batch_graphs: 4, lr: 1e-3, scheduler: cosine, seed: 0, ...}
    eval:   {mode: full, samples: 8, plot_samples: 3}
    distributed: {partition: metis, halo_hops: 1, timeout_s: 300, overlap: null, overlap_comm: false}  # P > 1

Command-line overrides use dotted keys: ``train.epochs=5 model.hidden=16 graph.max_neighbors=null``.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from dsmpnn.data.textfile import read_text
from dsmpnn.errors import ConfigError
from dsmpnn.graph.partition import DEFAULT_PARTITION_METHOD, PARTITION_METHODS
from dsmpnn.graph.radius import DEFAULT_MAX_EDGES
from dsmpnn.graph.sampling import CAP_MODES
from dsmpnn.messages import brief
from dsmpnn.ranges import SEED_MAX, Rule

__all__ = ["ModelConfig", "GraphConfig", "TrainConfig", "EvalConfig", "DistributedConfig", "Config", "Rule",
           "load_config", "apply_overrides", "read_config_file", "MAX_CONFIG_BYTES", "EDGE_FEATURES"]

MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused unread; real configs are under 2 KB."""
MAX_YAML_NODES = 10_000
"""A YAML document (config file or override value) with more nodes (scalars, lists, mappings) is refused."""
MAX_YAML_DEPTH = 32
"""Deepest nesting of lists and mappings a YAML document may have."""
MAX_OVERRIDE_CHARS = 4096
"""Longest ``section.key=value`` override accepted."""
EDGE_FEATURES = ("geometry", "inputs")
"""Values of ``graph.edge_features`` (see :class:`GraphConfig`)."""


# --- the values each key accepts (one Rule per field) ------------------------------------------------------


def _key(default: Any, rule: Rule) -> Any:
    """A dataclass field with its :class:`Rule` (lists get a fresh copy of ``default`` per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def _int(default: int | None, lo: int, hi: int) -> Any:
    return _key(default, Rule("int", lo, hi))


def _num(default: float | None, lo: float, hi: float | None = None, lo_open: bool = False) -> Any:
    return _key(default, Rule("float", lo, hi, lo_open))


def _pick(default: Any, choices: tuple) -> Any:
    return _key(default, Rule("choice", choices=tuple(choices)))


def _flag(default: bool) -> Any:
    return _pick(default, (False, True))


def _sizes(default: list[int], min_items: int) -> Any:
    """A list of layer widths."""
    return _key(default, Rule("list", min_items, 16, item=Rule("int", 1, 65536)))


class _Section:
    """Base of the config sections: every field carries a :class:`Rule`, all checked by one loop."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        for f in fields(self):
            self.check_key(f.name, getattr(self, f.name))
        self.check_together()

    @classmethod
    def check_key(cls, name: str, value: Any) -> None:
        """Check one key's value against its :class:`Rule` (a ConfigError naming ``section.name``)."""
        f = next(f for f in fields(cls) if f.name == name)
        nullable = type(None) in typing.get_args(_type_hints(cls)[name])
        f.metadata["rule"].check(f"{cls.section}.{name}", value, nullable)

    def check_together(self) -> None:
        """Rules that relate several keys of the section (none unless a section says so)."""


@dataclass
class ModelConfig(_Section):
    """The MPNN: encoder MLP -> ``layers`` edge-conditioned convolutions -> decoder MLP.

    ``kind: gcn`` swaps the convolutions for GCNConv (:class:`dsmpnn.nn.GCN`, single process only) of width
    ``gcn_hidden``; null picks the width whose parameter count is closest to the MPNN of the same config.
    ``checkpoint_layers``: recompute each processor layer in backward instead of storing its activations
    (``torch.utils.checkpoint``; same results, less memory on big graphs, about one more forward per step).
    """

    section: ClassVar[str] = "model"
    kind: str = _pick("mpnn", ("mpnn", "gcn"))
    hidden: int = _int(32, 1, 65536)
    layers: int = _int(4, 1, 1000)
    kernel_hidden: list[int] = _sizes([64], 1)
    encoder_hidden: list[int] = _sizes([64], 0)
    decoder_hidden: list[int] = _sizes([64], 0)
    aggr: str = _pick("mean", ("mean", "sum"))
    act: str = _pick("gelu", ("relu", "gelu", "silu", "tanh", "elu"))
    residual: bool = _flag(True)
    layer_norm: bool = _flag(False)
    use_pos: bool = _flag(True)
    gcn_hidden: int | None = _int(None, 1, 65536)
    checkpoint_layers: bool = _flag(False)


@dataclass
class GraphConfig(_Section):
    """Radius graph and Nyström sampling (radius in the mesh's length unit).

    ``max_edges``: a graph estimated to have more edges is refused before it is built (a radius too large for the
    mesh would otherwise exhaust memory). ``sampled_cap``: the ``max_neighbors`` of a graph on m of n nodes,
    ``scaled`` to k m / n (the reach of the full mesh's cap) or ``fixed`` (see :func:`dsmpnn.graph.sampled_cap`).

    ``edge_features``: what the edge kernel is conditioned on (:func:`dsmpnn.graph.edge_attributes`) for the edge
    j -> i with positions p and normalised input fields a (every input field of the dataset, in manifest order;
    not the positions):

    - ``geometry``: :math:`e_{ij} = [(p_j - p_i) / r, |p_j - p_i| / r]`, d + 1 values;
    - ``inputs``: the Graph Kernel Network's features (Li et al. 2020),
      :math:`e_{ij} = [(p_j - p_i) / r, |p_j - p_i| / r, a_i, a_j]`, d + 1 + 2F values for F input fields.
    """

    section: ClassVar[str] = "graph"
    radius: float = _num(0.1, 0.0, lo_open=True)
    max_neighbors: int | None = _int(None, 1, 100_000)
    sampled_cap: str = _pick("scaled", CAP_MODES)
    sample_nodes: int = _int(1024, 1, 10**9)
    samples_per_mesh: int = _int(2, 1, 10**6)
    max_edges: int = _int(DEFAULT_MAX_EDGES, 1, 10**12)
    edge_features: str = _pick("geometry", EDGE_FEATURES)


@dataclass
class TrainConfig(_Section):
    """Optimisation: Adam on the MSE of normalised targets over sampled graphs.

    ``prefetch``: build the next step's sampled graphs (and halo plans) in a background thread while this step
    computes (:mod:`dsmpnn.train.prefetch`); the same graphs and results either way; ``auto``: when a core is
    free for it (:func:`dsmpnn.train.prefetch.use_prefetch`).
    """

    section: ClassVar[str] = "train"
    epochs: int = _int(50, 1, 10**6)
    batch_graphs: int = _int(4, 1, 100_000)
    lr: float = _num(1e-3, 0.0, 1e3, lo_open=True)
    weight_decay: float = _num(0.0, 0.0, 1e3)
    scheduler: str = _pick("cosine", ("cosine", "constant", "step"))
    warmup_epochs: int = _int(0, 0, 10**6)
    min_lr_ratio: float = _num(0.01, 0.0, 1.0)
    grad_clip: float | None = _num(None, 0.0, lo_open=True)
    seed: int = _int(0, 0, SEED_MAX)
    dtype: str = _pick("float32", ("float32", "float64"))
    threads: int | None = _int(None, 1, 4096)
    eval_every: int = _int(10, 1, 10**6)
    checkpoint_every: int = _int(5, 1, 10**6)
    keep_checkpoints: int = _int(3, 1, 10_000)
    prefetch: bool | str = _pick("auto", ("auto", False, True))


@dataclass
class EvalConfig(_Section):
    """Evaluation: on the full mesh graph, or the mean of ``samples`` sampled predictions covering every node."""

    section: ClassVar[str] = "eval"
    mode: str = _pick("full", ("full", "sampled"))
    samples: int = _int(8, 1, 10_000)
    plot_samples: int = _int(3, 0, 1000)


@dataclass
class DistributedConfig(_Section):
    """Domain decomposition over P ranks (``dsmpnn train --nproc P`` or torchrun); ignored by one process.

    ``partition``: how each mesh is split (slab / rcb / metis, see :mod:`dsmpnn.graph.partition`);
    ``halo_hops``: halo width in graph hops, the halo exchange runs before every ``halo_hops``-th layer;
    ``timeout_s``: seconds a collective waits for the other ranks before the run fails (at most a week);
    ``overlap``: null = the exact graph halo (``halo_hops``); a distance l (mesh length unit) = the paper's
    geometric overlap, halo = nodes within l of a subdomain, exchange before every layer. l >= graph.radius is
    exact; l < radius drops edges, so the run differs from one process (a warning says so).
    ``verify_exchange``: before a graph's first halo exchange, the ranks swap their send counts and check them
    against their plans' receive counts (one more all-to-all per graph; ``dsmpnn check`` always does it).
    ``overlap_comm``: run each halo exchange while the layer computes the messages of the edges whose source is owned
    (:class:`dsmpnn.nn.OverlappedExchange`; its adjoint likewise in backward); false (the default) waits for the
    exchange first, which measured faster with gloo on a shared 2-core machine (benchmarks/bench_overlap.py). Both
    give the single-process result up to round-off (``dsmpnn check`` verifies either).
    """

    section: ClassVar[str] = "distributed"
    partition: str = _pick(DEFAULT_PARTITION_METHOD, PARTITION_METHODS)
    halo_hops: int = _int(1, 1, 1000)
    timeout_s: float = _num(300.0, 0.0, 7 * 24 * 3600.0, lo_open=True)
    overlap: float | None = _num(None, 0.0)
    verify_exchange: bool = _flag(False)
    overlap_comm: bool = _flag(False)

    def check_together(self) -> None:
        if self.overlap is not None and self.halo_hops != 1:
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
    def from_dict(obj: Any, where: str = "config", origins: dict[str, str] | None = None) -> "Config":
        """Build and check a config from its mapping; errors name ``where`` (the file), or for a key in
        ``origins`` ({"section.key": "override section.key=value"}) where that key's value came from."""
        return _build(Config, obj, where, "", origins or {})


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        raw = read_config_file(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, graph, train, eval, distributed), "
                              f"got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    return Config.from_dict(raw, where, override_origins(overrides))


def override_origins(overrides: list[str]) -> dict[str, str]:
    """{"section.key": "override section.key=value"} for each ``key=value`` (the last one of a key wins, as in
    :func:`apply_overrides`), so that a bad value is reported against the override that set it."""
    return {item.split("=", 1)[0].strip(): f"override {brief(item)}" for item in overrides if "=" in item}


def read_config_file(path: Path) -> Any:
    """The YAML document of a config file (or RUN/config.yaml), read with every check of :class:`_ConfigLoader`:
    a regular file of at most :data:`MAX_CONFIG_BYTES`, UTF-8, no aliases, no duplicate keys, bounded size."""
    text = read_text(path, "config file", ConfigError, MAX_CONFIG_BYTES)
    try:
        return _load_yaml(text)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except (yaml.YAMLError, ValueError) as e:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(e)})") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of ``raw`` with each ``section.key=value`` set (value parsed as YAML, with the checks of
    config files; text that is not valid YAML is taken as a string)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        if len(item) > MAX_OVERRIDE_CHARS:
            raise ConfigError(f"override {brief(item)} has {len(item):,} characters, more than the "
                              f"{MAX_OVERRIDE_CHARS:,} an override may have")
        if "=" not in item:
            raise ConfigError(f"override {brief(item)} must look like section.key=value, e.g. train.epochs=10")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"override {brief(item)}: key must be section.key (e.g. model.hidden), got "
                              f"{brief(key)}")
        try:
            parsed = _load_yaml(value)
        except ConfigError as e:
            raise ConfigError(f"override {brief(item)}: {e}") from None
        except (yaml.YAMLError, ValueError):
            parsed = value
        section = out.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"override {brief(item)}: {brief(parts[0])} is not a section")
        section[parts[1]] = parsed
    return out


# --- YAML with bounds -----------------------------------------------------------------------------------------


class _ConfigLoader(yaml.SafeLoader):
    """A SafeLoader for configs: refuses aliases (a 400-byte alias bomb would expand to gigabytes; configs never
    need them), duplicate mapping keys (the later one would silently win), more than :data:`MAX_YAML_NODES`
    nodes and nesting deeper than :data:`MAX_YAML_DEPTH`. Refusals are ConfigErrors naming the line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(f"line {line}: YAML alias *{event.anchor[:30]} is not allowed in a config "
                              "(write the value out)")
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise ConfigError(f"line {line}: more than {MAX_YAML_NODES:,} YAML values, more than a config may have")
        if self._depth >= MAX_YAML_DEPTH:
            raise ConfigError(f"line {line}: nested deeper than {MAX_YAML_DEPTH} levels")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node)
                if key in seen:
                    raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {brief(key, 40)}")
                seen.add(key)
        return super().construct_mapping(node, deep)


def _load_yaml(text: str) -> Any:
    """One YAML document through :class:`_ConfigLoader`; raises ConfigError (refused), YAMLError or ValueError
    (not valid: e.g. an integer of more than 4,300 digits)."""
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _one_line(error: Exception, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters."""
    text = " ".join(str(error)[: limit * 4].split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- from a mapping to the dataclasses ------------------------------------------------------------------------


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(cls)`` of a config dataclass, resolved once (every key's check reads it)."""
    return typing.get_type_hints(cls)


def _build(cls: type, obj: Any, where: str, section: str, origins: dict[str, str]) -> Any:
    """``cls`` from the mapping ``obj``; each key's errors name its origin (``origins``, else ``where``)."""
    if obj is None:
        obj = {}
    what = f"section '{section}'" if section else "the top level"
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: {what} must be a mapping, got {type(obj).__name__} {brief(obj, 40)}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted((k for k in obj if k not in known), key=str)
    if unknown:
        listed = ", ".join(brief(k, 40) for k in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        named = {f"{section}.{k}" if section else k for k in unknown}  # as an override's key (top level: its section)
        src = next((o for key, o in origins.items() if (key if section else key.split(".")[0]) in named), where)
        raise ConfigError(f"{src}: unknown key(s) [{listed}] in {what}; valid keys are {sorted(known)}")
    hints = _type_hints(cls)
    kwargs = {}
    for name, value in obj.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, where, name, origins)
            continue
        try:
            kwargs[name] = _check_type(value, hint, f"{section}.{name}")
            cls.check_key(name, kwargs[name])  # here, not only in cls(...), to name where the value came from
        except ConfigError as e:
            raise ConfigError(f"{origins.get(f'{section}.{name}', where)}: {e}") from None
    try:
        return cls(**kwargs)
    except (ConfigError, TypeError) as e:  # a rule relating several keys: name the overrides among them too
        mine = [o for key, o in origins.items() if key.split(".")[0] == section]
        raise ConfigError(f"{where}{' with ' + ', '.join(mine) if mine else ''}: {e}") from None


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
        raise ConfigError(f"{where} is {type(value).__name__} {brief(value)}, expected {names}")
    if hint is type(None):
        raise ConfigError(f"{where} is {brief(value)}, expected null")
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where} is {type(value).__name__} {brief(value)}, expected a list of "
                              f"{inner.__name__}")
        return [_check_type(v, inner, where) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{where} is {brief(value)}, too large for a float") from None
    if hint is float and isinstance(value, str) and len(value) < 100:
        try:
            return float(value)  # YAML 1.1 reads 1e-3 as a string
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where} is {type(value).__name__} {brief(value)}, expected {hint.__name__}")
    return value
