r"""A performance model of DS-MPNN training steps from P = 1 to P = 1024 ranks (pure functions, numpy only).

One training step of an MPNN with L message-passing layers and ``halo_hops = 1`` runs, on every rank p, the
encoder, then before each layer a halo exchange and the layer, then the decoder and loss; backward mirrors it
(each exchange's adjoint sends the halo gradients back, the same bytes in the other direction); then one
all-reduce of the gradients. With the per-rank loads of a real partition (:class:`RankLoads`) the model is

.. math::
    c_p &= t_0 + t_n\,(n^{own}_p + n^{halo}_p) + t_e\,E_p
        &&\text{(one layer, forward + backward)}\\
    x_p &= a_{call} + \sum_{q \in \mathrm{peers}(p)} \alpha_{pq}
          + \max_{\text{link } k} \frac{b\,C\,\max(r^{out}_{p,k}, r^{in}_{p,k})}{\beta_k}
        &&\text{(one exchange, one direction)}\\
    T(P) &= L \big(\max_p c_p + 2 \max_p x_p\big) + \max_p t_r (n^{own}_p + n^{halo}_p) + t_s + A(P)

with :math:`E_p` the edges into the owned nodes of p, :math:`r^{out/in}_{p,k}` the rows p sends / receives over
link class k (NVLink within a node, InfiniBand between nodes; one class on a single machine), b bytes per value,
C channels, :math:`t_r` the per-node cost of encoder, decoder, activations and loss, :math:`t_s` the per-step
constant (optimizer, Python), and A(P) the gradient all-reduce (:meth:`Network.allreduce_seconds`). Every
exchange is a synchronisation point, hence the max over ranks of each term. ``P = 1`` has no exchange and no
all-reduce.

**Overlap** (not implemented in the library; what the step would cost if it were): the work of a layer that
needs no halo value, the *interior* :math:`i_p = t_0 + t_n n^{own}_p + t_e (E_p - E^{cut}_p)`, can run while
the halo travels, the rest, the *boundary* :math:`t_n n^{halo}_p + t_e E^{cut}_p` (edges out of halo nodes),
after it arrives. With f the forward share of a layer's time, a layer costs
:math:`\max_p[\max(f i_p, x_p) + f (c_p - i_p)] + \max_p[\max((1-f) i_p, x_p) + (1-f)(c_p - i_p)]`.

**Halo volumes** come from real partitions (:func:`rank_loads`, a count over the cut edges equal to the
library's halo plans, see the tests). Beyond the meshes partitioned, loads are extrapolated at fixed P by the
surface-to-volume law (:func:`extrapolate_loads`): owned nodes and edges grow like N, halo rows, cut edges and
rows per peer like :math:`N^{(d-1)/d}`, the peers stay: exact for a partition whose shape does not change with N
(rcb and slab on uniform clouds; METIS approximately), and marked as extrapolated wherever it is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["Link", "Network", "ComputeCosts", "Machine", "RankLoads", "StepPrediction", "fit_alpha_beta",
           "fit_linear_costs", "fit_power_law", "surface_exponent", "rank_loads", "single_rank_loads",
           "extrapolate_loads", "predict_step", "efficiency", "crossover", "POWERS_OF_TWO"]

POWERS_OF_TWO = tuple(2**k for k in range(11))
"""P = 1, 2, 4, ..., 1024: the rank counts of the predictions."""


# ---------------------------------------------------------------------------------------------------------------
# cost models
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Link:
    r"""One message of b bytes costs :math:`\alpha + b / \beta` seconds."""

    alpha_s: float
    beta_bytes_per_s: float

    def __post_init__(self) -> None:
        if not (self.alpha_s >= 0 and self.beta_bytes_per_s > 0):
            raise ValueError(f"Link needs alpha >= 0 and beta > 0, got {self.alpha_s}, {self.beta_bytes_per_s}")

    def seconds(self, nbytes: float | np.ndarray) -> float | np.ndarray:
        return self.alpha_s + np.asarray(nbytes) / self.beta_bytes_per_s


@dataclass(frozen=True)
class Network:
    r"""How ranks talk: ``intra`` within a node of ``ranks_per_node`` ranks, ``inter`` between nodes.

    ``ranks_per_node = None``: every rank on one node (only ``intra`` is used). ``call_s``: fixed cost of one
    exchange call (kernel launch / collective set-up), paid once however many peers. ``dense_messages``: the
    exchange sends one message to every other rank, empty ones included (gloo's ``all_to_all_single``, the
    library's default exchange mode on CPU); otherwise messages go to the peers only (``mode="p2p"``, and NCCL,
    assumed to skip empty sends). ``allreduce``: "ring" (:math:`2(P-1)\alpha + 2\frac{P-1}{P} b/\beta`, Thakur,
    Rabenseifner and Gropp 2005) or "tree" (NCCL's tree model: :math:`a_{call} + 2((P_{node}-1)\alpha_{intra} +
    \lceil\log_2 n_{nodes}\rceil \alpha_{inter}) + 2 b / \beta`, NVIDIA/nccl src/graph/tuning.cc). ``collective``:
    the link of the ring's steps when it differs from the exchange's (gloo's all-reduce is not its halo exchange;
    default: ``intra`` on one node, ``inter`` across nodes).
    """

    intra: Link
    inter: Link | None = None
    ranks_per_node: int | None = None
    call_s: float = 0.0
    dense_messages: bool = False
    allreduce: str = "ring"
    collective: Link | None = None

    def __post_init__(self) -> None:
        if self.ranks_per_node is not None and (self.ranks_per_node < 1 or self.inter is None):
            raise ValueError("a multi-node Network needs ranks_per_node >= 1 and an inter-node Link")
        if self.allreduce not in ("ring", "tree"):
            raise ValueError(f"allreduce must be 'ring' or 'tree', got {self.allreduce!r}")

    def node_of(self, ranks: np.ndarray) -> np.ndarray:
        """Node index of every rank (ranks are packed: ranks 0..k-1 on node 0, and so on)."""
        return np.zeros_like(ranks) if self.ranks_per_node is None else np.asarray(ranks) // self.ranks_per_node

    def allreduce_seconds(self, nbytes: float, nparts: int) -> float:
        """Time of one all-reduce of ``nbytes`` over ``nparts`` ranks (0 for one rank)."""
        if nparts <= 1:
            return 0.0
        nodes = 1 if self.ranks_per_node is None else math.ceil(nparts / self.ranks_per_node)
        slow = self.collective or (self.intra if nodes == 1 else self.inter)
        if self.allreduce == "ring":
            return self.call_s + 2 * (nparts - 1) * slow.alpha_s + 2 * (nparts - 1) / nparts * nbytes \
                / slow.beta_bytes_per_s
        per_node = min(nparts, self.ranks_per_node or nparts)
        latency = 2 * ((per_node - 1) * self.intra.alpha_s
                       + (math.ceil(math.log2(nodes)) * self.inter.alpha_s if nodes > 1 else 0.0))
        return self.call_s + latency + 2 * nbytes / slow.beta_bytes_per_s


@dataclass(frozen=True)
class ComputeCosts:
    """Seconds per unit of work, all for one layer's forward + backward unless said otherwise.

    ``edge_s`` per edge, ``node_s`` per local row (owned or halo), ``layer_s`` per layer call; ``rest_node_s``
    per local row and step for everything outside the message-passing layers (encoder, decoder, activations,
    residuals, loss); ``step_s`` per step (optimizer, Python); ``forward_fraction`` the forward pass's share of a
    layer's time (for the overlap model).
    """

    edge_s: float
    node_s: float
    layer_s: float = 0.0
    rest_node_s: float = 0.0
    step_s: float = 0.0
    forward_fraction: float = 1 / 3

    def __post_init__(self) -> None:
        values = (self.edge_s, self.node_s, self.layer_s, self.rest_node_s, self.step_s)
        if min(values) < 0 or not 0 < self.forward_fraction < 1:
            raise ValueError(f"ComputeCosts must be non-negative with 0 < forward_fraction < 1, got {self}")


@dataclass(frozen=True)
class Machine:
    """Compute costs of one rank, the network between ranks, and the numbers format."""

    name: str
    compute: ComputeCosts
    network: Network
    bytes_per_value: int = 4
    notes: str = ""


# ---------------------------------------------------------------------------------------------------------------
# fits
# ---------------------------------------------------------------------------------------------------------------

def fit_alpha_beta(nbytes: Sequence[float], seconds: Sequence[float]) -> Link:
    r"""Least-squares :math:`t = \alpha + b / \beta` through measured (bytes, seconds), weighted by 1/t so every
    size counts by its relative error (the sizes span 1 KB..64 MB; unweighted, the largest would fix both).

    The weighted problem: minimise :math:`\sum_i ((\alpha + b_i g - t_i) / t_i)^2` over :math:`\alpha, g = 1/\beta`,
    with :math:`\alpha \ge 0` (a negative fit is clipped to 0 and g refitted).
    """
    b, t = np.asarray(nbytes, dtype=float), np.asarray(seconds, dtype=float)
    if b.shape != t.shape or b.size < 2 or np.any(t <= 0):
        raise ValueError("fit_alpha_beta needs at least two (bytes, seconds > 0) pairs of equal length")
    w = 1.0 / t
    a = np.column_stack([np.ones_like(b), b]) * w[:, None]
    alpha, g = np.linalg.lstsq(a, np.ones_like(t), rcond=None)[0]
    if alpha < 0:
        alpha, g = 0.0, float(np.sum(b * w * w * t) / np.sum((b * w) ** 2))
    if g <= 0:
        raise ValueError("fit_alpha_beta: time does not grow with the message size; cannot fit a bandwidth")
    return Link(float(alpha), float(1.0 / g))


def fit_linear_costs(features: np.ndarray, seconds: Sequence[float]) -> np.ndarray:
    r"""Non-negative least squares :math:`t_i \approx \sum_k x_{ik} \theta_k`, weighted by :math:`1/t_i`
    (relative errors). ``features [n, K]`` (e.g. columns 1, nodes, edges), returns :math:`\theta [K] \ge 0`."""
    from scipy.optimize import nnls  # noqa: PLC0415

    x, t = np.asarray(features, dtype=float), np.asarray(seconds, dtype=float)
    if x.ndim != 2 or x.shape[0] != t.shape[0] or x.shape[0] < x.shape[1] or np.any(t <= 0):
        raise ValueError(f"fit_linear_costs needs [n, K] features with n >= K and n positive times, got {x.shape}")
    w = 1.0 / t
    theta, _ = nnls(x * w[:, None], t * w)
    return theta


def surface_exponent(dim: int) -> float:
    """(d - 1) / d: how the halo of a subdomain of n nodes grows with n in d dimensions."""
    if dim not in (1, 2, 3):
        raise ValueError(f"dim must be 1, 2 or 3, got {dim}")
    return (dim - 1) / dim


def fit_power_law(x: Sequence[float], y: Sequence[float], exponent: float | None = None) -> tuple[float, float]:
    r"""Fit :math:`y = c\,x^e` in log-log space: least squares for (log c, e), or only log c when ``exponent``
    is given (then c is the geometric mean of :math:`y / x^e`). Returns (c, e)."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    if lx.shape != ly.shape or lx.size < (1 if exponent is not None else 2):
        raise ValueError("fit_power_law needs matching positive x and y (two or more points to fit the exponent)")
    if exponent is None:
        exponent, logc = np.polyfit(lx, ly, 1)
    else:
        logc = float(np.mean(ly - exponent * lx))
    return float(np.exp(logc)), float(exponent)


# ---------------------------------------------------------------------------------------------------------------
# per-rank loads of a partition
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankLoads:
    """Per-rank work and halo traffic of one partition of one graph (``halo_hops = 1``).

    Shapes: owned, halo, edges, cut_edges: [P]; pair_recv, pair_send, pair_rows: [M] -- rank ``pair_recv[i]``
    receives ``pair_rows[i]`` halo rows from rank ``pair_send[i]`` per exchange (one entry per ordered pair of
    ranks that exchange anything). ``edges[p]``: edges into p's owned nodes; ``cut_edges[p]``: those whose source
    is a halo node. ``extrapolated_from``: N of the partition these loads were scaled from (None: computed).
    """

    nodes: int
    dim: int
    owned: np.ndarray
    halo: np.ndarray
    edges: np.ndarray
    cut_edges: np.ndarray
    pair_recv: np.ndarray
    pair_send: np.ndarray
    pair_rows: np.ndarray
    method: str = ""
    extrapolated_from: int | None = None
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        p = len(self.owned)
        for name in ("halo", "edges", "cut_edges"):
            if np.shape(getattr(self, name)) != (p,):
                raise ValueError(f"RankLoads.{name} has shape {np.shape(getattr(self, name))}, expected [{p}]")
        m = np.shape(self.pair_rows)
        if np.shape(self.pair_recv) != m or np.shape(self.pair_send) != m:
            raise ValueError("RankLoads: pair_recv, pair_send and pair_rows must have the same length")
        if m[0] and (min(self.pair_recv.min(), self.pair_send.min()) < 0
                     or max(self.pair_recv.max(), self.pair_send.max()) >= p):
            raise ValueError(f"RankLoads: pair ranks must lie in [0, {p})")

    @property
    def nparts(self) -> int:
        return len(self.owned)

    @property
    def local_rows(self) -> np.ndarray:
        """[P] owned + halo rows: the rows every layer computes on."""
        return self.owned + self.halo

    @property
    def send_rows(self) -> np.ndarray:
        """[P] rows each rank sends per exchange."""
        return np.bincount(self.pair_send, weights=self.pair_rows, minlength=self.nparts)

    @property
    def peers(self) -> np.ndarray:
        """[P] number of ranks each rank sends to or receives from (symmetric graphs: the same ranks)."""
        if "peers" not in self._derived:
            a = np.concatenate([self.pair_recv, self.pair_send])
            b = np.concatenate([self.pair_send, self.pair_recv])
            key = np.unique(a.astype(np.int64) * self.nparts + b)
            self._derived["peers"] = np.bincount(key // self.nparts, minlength=self.nparts)
        return self._derived["peers"]

    def summary(self) -> dict:
        """Max / mean of the per-rank numbers (JSON-able)."""
        out = {"nodes": self.nodes, "dim": self.dim, "P": self.nparts, "method": self.method,
               "extrapolated_from": self.extrapolated_from,
               "imbalance": float(self.owned.max() / self.owned.mean())}
        for name, arr in (("owned", self.owned), ("halo", self.halo), ("edges", self.edges),
                          ("cut_edges", self.cut_edges), ("send_rows", self.send_rows), ("peers", self.peers)):
            out[f"{name}_max"] = float(np.max(arr))
            out[f"{name}_mean"] = float(np.mean(arr))
        out["halo_fraction_max"] = float(np.max(self.halo / np.maximum(self.owned, 1)))
        return out


def rank_loads(owner: np.ndarray, pairs: np.ndarray, nparts: int, dim: int, method: str = "",
               chunk: int = 1 << 24) -> RankLoads:
    """The loads of partition ``owner [N]`` of the symmetric graph whose undirected edges are ``pairs [M, 2]``
    (each unordered pair once, e.g. ``cKDTree.query_pairs``; the graph has the edges i -> j and j -> i).

    Equal to what :func:`dsmpnn.graph.build_halo_plans` gives with ``halo_hops = 1`` (tests compare them), but
    computed from the cut edges alone, ``chunk`` pairs at a time: memory ~ N + the cut, not ~ E.
    Halo of rank p: the distinct sources of cut edges into p; rows p receives from q: those owned by q.
    """
    owner = np.asarray(owner)
    n = len(owner)
    own = owner.astype(np.int64)
    degree = np.zeros(n, dtype=np.int64)  # neighbours of each node = edges into it
    cut_src, cut_rank = [], []  # directed cut edges: source node, rank owning the target
    for s in range(0, len(pairs), chunk):
        a, b = pairs[s:s + chunk, 0], pairs[s:s + chunk, 1]
        degree += np.bincount(a, minlength=n) + np.bincount(b, minlength=n)
        oa, ob = owner[a], owner[b]
        cut = oa != ob
        cut_src += [a[cut], b[cut]]  # a -> b into rank ob, b -> a into rank oa
        cut_rank += [ob[cut], oa[cut]]
    src = np.concatenate(cut_src).astype(np.int64) if cut_src else np.zeros(0, np.int64)
    dst_rank = np.concatenate(cut_rank).astype(np.int64) if cut_rank else np.zeros(0, np.int64)
    halo_key = np.unique(dst_rank * n + src)  # (receiving rank, halo node), each once
    recv, node = halo_key // n, halo_key % n
    pair_key, rows = np.unique(recv * nparts + own[node], return_counts=True)
    return RankLoads(
        nodes=n, dim=dim, method=method,
        owned=np.bincount(own, minlength=nparts), halo=np.bincount(recv, minlength=nparts),
        edges=np.bincount(own, weights=degree, minlength=nparts).astype(np.int64),
        cut_edges=np.bincount(dst_rank, minlength=nparts),
        pair_recv=pair_key // nparts, pair_send=pair_key % nparts, pair_rows=rows.astype(np.int64))


def single_rank_loads(nodes: int, edges: float, dim: int) -> RankLoads:
    """P = 1: everything owned, no halo, no peers."""
    none = np.zeros(0, dtype=np.int64)
    return RankLoads(nodes=int(nodes), dim=dim, owned=np.array([nodes]), halo=np.array([0]),
                     edges=np.array([round(edges)]), cut_edges=np.array([0]), pair_recv=none, pair_send=none,
                     pair_rows=none, method="-")


def extrapolate_loads(loads: RankLoads, nodes: int) -> RankLoads:
    r"""The same partition on a mesh of ``nodes`` nodes, by the surface-to-volume law at fixed P: with
    :math:`s = N / N_0`, owned nodes and edges scale by s, halo rows, cut edges and rows per peer by
    :math:`s^{(d-1)/d}`; the peers stay. ``extrapolated_from`` records :math:`N_0` (kept through repeated calls).
    """
    s = nodes / loads.nodes
    if s == 1:
        return loads
    h = s ** surface_exponent(loads.dim)
    return replace(loads, nodes=int(nodes), owned=loads.owned * s, halo=loads.halo * h, edges=loads.edges * s,
                   cut_edges=loads.cut_edges * h, pair_rows=loads.pair_rows * h,
                   extrapolated_from=loads.extrapolated_from or loads.nodes, _derived=loads._derived)


# ---------------------------------------------------------------------------------------------------------------
# step time
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StepPrediction:
    """Predicted seconds of one training step (slowest rank of each phase); see the module docstring."""

    nparts: int
    compute_layer_s: float      # max_p c_p: one layer, forward + backward
    interior_layer_s: float     # max_p i_p: the part that needs no halo value
    exchange_s: float           # max_p x_p: one exchange, one direction
    rest_s: float               # encoder, decoder, loss, optimizer
    allreduce_s: float          # gradient (and loss) all-reduce
    step_s: float               # no overlap
    step_overlap_s: float       # interior work overlapping the exchanges

    @property
    def exchange_layer_s(self) -> float:
        """Exchange time of one layer, forward + backward (two exchanges)."""
        return 2 * self.exchange_s

    def as_dict(self) -> dict:
        return {"P": self.nparts, "compute_layer_s": self.compute_layer_s, "interior_layer_s": self.interior_layer_s,
                "exchange_s": self.exchange_s, "exchange_layer_s": self.exchange_layer_s, "rest_s": self.rest_s,
                "allreduce_s": self.allreduce_s, "step_s": self.step_s, "step_overlap_s": self.step_overlap_s}


def exchange_seconds(loads: RankLoads, net: Network, row_bytes: float) -> np.ndarray:
    """[P] seconds of one exchange (one direction) on each rank: per-message latencies plus the larger of the
    bytes out and in over each link class, classes in parallel (module docstring)."""
    P = loads.nparts
    if P == 1:
        return np.zeros(1)
    intra_pair = net.node_of(loads.pair_recv) == net.node_of(loads.pair_send)
    secs = np.full(P, net.call_s)
    link_time = np.zeros(P)
    for link, mask in ((net.intra, intra_pair), (net.inter, ~intra_pair)):
        if link is None or not mask.any():
            continue
        rows_in = np.bincount(loads.pair_recv[mask], weights=loads.pair_rows[mask], minlength=P)
        rows_out = np.bincount(loads.pair_send[mask], weights=loads.pair_rows[mask], minlength=P)
        link_time = np.maximum(link_time, np.maximum(rows_in, rows_out) * row_bytes / link.beta_bytes_per_s)
        if not net.dense_messages:  # one message per peer over this link (symmetric: the receive side)
            peers = np.bincount(loads.pair_recv[mask], minlength=P)
            secs += peers * link.alpha_s
    if net.dense_messages:  # a message to every other rank; the slower link's latency for the remote ones
        ranks = np.arange(P)
        node = net.node_of(ranks)
        same = np.bincount(node, minlength=int(node.max()) + 1)[node] - 1
        remote = (P - 1) - same
        secs += same * net.intra.alpha_s + remote * (net.inter.alpha_s if net.inter is not None else net.intra.alpha_s)
    return secs + link_time


def predict_step(loads: RankLoads, machine: Machine, layers: int, channels: int, parameters: int) -> StepPrediction:
    """Predicted step time of ``loads`` on ``machine``: an MPNN of ``layers`` layers, ``channels`` features per
    halo row, ``parameters`` trainable values all-reduced once per step (module docstring for the formulas)."""
    cc, net = machine.compute, machine.network
    rows = loads.local_rows
    comp = cc.layer_s + cc.node_s * rows + cc.edge_s * loads.edges  # [P]
    interior = cc.layer_s + cc.node_s * loads.owned + cc.edge_s * (loads.edges - loads.cut_edges)  # [P]
    boundary = comp - interior
    ex = exchange_seconds(loads, net, channels * machine.bytes_per_value)  # [P]
    rest = float(np.max(cc.rest_node_s * rows)) + cc.step_s
    allreduce = net.allreduce_seconds(parameters * machine.bytes_per_value, loads.nparts) \
        + net.allreduce_seconds(8, loads.nparts)  # gradients, then the loss (one float64)
    if loads.nparts == 1:
        ex = np.zeros(1)
    f = cc.forward_fraction
    no_overlap = layers * (np.max(comp) + 2 * np.max(ex))
    overlap = layers * (np.max(np.maximum(f * interior, ex) + f * boundary)
                        + np.max(np.maximum((1 - f) * interior, ex) + (1 - f) * boundary))
    return StepPrediction(nparts=loads.nparts, compute_layer_s=float(np.max(comp)),
                          interior_layer_s=float(np.max(interior)), exchange_s=float(np.max(ex)), rest_s=rest,
                          allreduce_s=allreduce, step_s=float(no_overlap + rest + allreduce),
                          step_overlap_s=float(overlap + rest + allreduce))


def efficiency(t1: float, tp: float, nparts: int, strong: bool) -> float:
    """Parallel efficiency: strong T(1) / (P T(P)) for a fixed mesh, weak T(1) / T(P) for a fixed mesh per rank."""
    return t1 / (nparts * tp) if strong else t1 / tp


def crossover(predictions: Sequence[StepPrediction], overlap: bool = False) -> int | None:
    """The smallest P at which one layer's exchanges (forward + backward) take longer than its compute (without
    overlap), or than its interior compute (with overlap: from there on the exchange can no longer be hidden);
    None when no P of ``predictions`` gets there."""
    for p in sorted(predictions, key=lambda s: s.nparts):
        if p.nparts > 1 and p.exchange_layer_s > (p.interior_layer_s if overlap else p.compute_layer_s):
            return p.nparts
    return None
