r"""Halo exchange: overwrite halo rows with their owners' current values, as an autograd function.

Let :math:`E` be the exchange as a linear map on the stacked local features of all ranks. Forward,
:math:`(E h)_p = h_p` on owned rows and :math:`h_{\mathrm{owner}(v)}[v]` on each halo row v. Backward applies
:math:`E^\top`: the halo rows' gradients travel back to the owners and are ADDED to the owned rows (a node that
is halo on several ranks collects every contribution); the halo rows' own gradient is zero, since their
incoming values were discarded.

The exchange is graph-agnostic: it only moves the rows a :class:`~dsmpnn.graph.HaloPlan` names, with one
``all_to_all_single`` (default) or batched point-to-point sends and receives between neighbouring ranks only
(``mode="p2p"``, fewer messages when P is large). Both work with gloo (CPU) and NCCL (CUDA).

Overlapped (:meth:`HaloExchange.start` / :meth:`HaloExchange.finish`, :class:`OverlappedLayerExchange`,
``distributed.overlap_comm``): :math:`E h = F(h, S(h))`, where :math:`S(h) = T\,h[\mathrm{send}]` posts the
transfer T of the rows the peers need and returns their buffer at once, and F waits and writes the received rows
into the halo rows. The model computes what needs no halo row between S and F. Backward runs
:math:`F^\top` first: the halo rows' gradients are sent back at once (:math:`T^\top` posted), then autograd
runs the nodes recorded between S and F in forward (the interior edges' backward), then :math:`S^\top` waits and
adds the received gradients into the send rows. Together the same :math:`E^\top` as the blocking exchange.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import accumulate

import numpy as np
import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from dsmpnn.distributed.process_group import collective
from dsmpnn.errors import DsmpnnError
from dsmpnn.graph.halo import HaloPlan

__all__ = ["HaloExchange", "HaloHandle", "LayerExchange", "OverlappedLayerExchange", "ExchangeStats", "make_exchange",
           "EXCHANGE_MODES"]

EXCHANGE_MODES = ("all_to_all", "p2p")


@dataclass
class ExchangeStats:
    """Counters of one rank's exchanges (forward and backward together); ``seconds``: time spent in the calls
    that post and wait for transfers (when overlapped, only the part that computation did not hide)."""

    calls: int = 0
    rows_sent: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0

    def reset(self) -> None:
        self.calls, self.rows_sent, self.bytes_sent, self.seconds = 0, 0, 0, 0.0


class _Exchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, ex):  # noqa: D401 - autograd signature
        ctx.ex = ex
        return ex.apply_forward(h)

    @staticmethod
    def backward(ctx, g):
        return ctx.ex.apply_adjoint(g.contiguous()), None


class _Transfer:
    """One transfer in flight: the receive buffer and the backend's requests; :meth:`wait` completes it once."""

    def __init__(self, ex: "HaloExchange", recv: torch.Tensor, waits: list) -> None:
        self.ex, self.recv, self.waits = ex, recv, waits

    def wait(self) -> torch.Tensor:
        """The received rows, after waiting for them (at once when already waited for)."""
        t0 = time.perf_counter()
        for req, op, peers in self.waits:
            with collective(op, peers, group=self.ex.group):
                req.wait()
        if self.waits and self.ex.synchronize and self.recv.is_cuda:
            torch.cuda.synchronize(self.recv.device)
        self.waits = []
        self.ex.stats.seconds += time.perf_counter() - t0
        return self.recv


@dataclass(eq=False)
class HaloHandle:
    """An exchange started by :meth:`HaloExchange.start`: ``recv`` the halo rows' new values [R, C] (autograd output
    of the start; valid once ``forward`` is waited for), ``forward`` the transfer of those rows, ``adjoint`` the
    transfer of their gradients back, once the backward pass has started it."""

    recv: torch.Tensor | None = None
    forward: _Transfer | None = None
    adjoint: _Transfer | None = None


class _Start(torch.autograd.Function):
    """recv = the peers' rows, h's send rows going out: ``recv = T(h[send_rows])``; backward adds ``Tᵀ g_recv``
    into the send rows, receiving what :class:`_Finish`'s backward sent (or sending it now if it did not)."""

    @staticmethod
    def forward(ctx, h, ex, handle):  # noqa: D401 - autograd signature
        ctx.ex, ctx.handle = ex, handle
        send_rows, _ = ex._indices(h.device)
        handle.forward = ex._post(h.index_select(0, send_rows).contiguous(), ex.send_counts, ex.recv_counts)
        return handle.forward.recv  # [R, C]

    @staticmethod
    @once_differentiable
    def backward(ctx, g_recv):
        transfer = ctx.handle.adjoint or ctx.ex._post_adjoint(g_recv)
        ctx.handle.adjoint = None
        return ctx.ex._owned_gradient(transfer.wait()), None, None


class _Finish(torch.autograd.Function):
    """E h from h and the received rows: ``h`` with its halo rows replaced by ``recv``. Backward: the halo rows'
    gradient goes to ``recv`` and, at once, on its way back to the owners (so the transfer overlaps whatever autograd
    runs before :class:`_Start`'s backward); the other rows' gradient goes to ``h``."""

    @staticmethod
    def forward(ctx, h, recv, ex, handle):  # noqa: D401 - autograd signature
        ctx.ex, ctx.handle = ex, handle
        handle.forward.wait()  # at once when a recomputation (checkpoint) calls it again
        _, recv_rows = ex._indices(h.device)
        return h.index_copy(0, recv_rows, recv)  # [n_local, C]

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        _, recv_rows = ctx.ex._indices(g.device)
        g_recv = g.index_select(0, recv_rows)  # [R, C]
        ctx.handle.adjoint = ctx.ex._post_adjoint(g_recv)
        return g.index_fill(0, recv_rows, 0), g_recv, None, None


class HaloExchange:
    """Refreshes the halo rows of a local feature tensor ``h [n_local, C]`` from their owners.

    Args:
        plan: this rank's :class:`HaloPlan`; ``plan.rank`` and ``plan.nparts`` must match the process group.
        group: the process group (default: the world).
        mode: "all_to_all" (one collective) or "p2p" (batched isend/irecv with the plan's peers only).
        verify: exchange the send counts once and check they match every peer's receive counts, so plans built
            from different graphs fail here with a clear message instead of hanging or corrupting rows.
        synchronize: call ``torch.cuda.synchronize`` around CUDA exchanges so ``stats.seconds`` is exact.

    ``HaloExchange(plan)(h)`` returns a new tensor (``h`` is not modified). ``stats`` counts calls, rows and
    bytes sent by this rank, and seconds spent.
    """

    def __init__(self, plan: HaloPlan, group: dist.ProcessGroup | None = None, mode: str = "all_to_all",
                 verify: bool = True, synchronize: bool = False) -> None:
        if mode not in EXCHANGE_MODES:
            raise DsmpnnError(f"unknown exchange mode {mode!r}, expected one of {list(EXCHANGE_MODES)}")
        if not dist.is_initialized():
            raise DsmpnnError("HaloExchange needs an initialised process group (see dsmpnn.distributed."
                              "init_from_env); a single process needs no exchange")
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        if plan.nparts != world or plan.rank != rank:
            raise DsmpnnError(f"halo plan is for rank {plan.rank} of {plan.nparts}, but this process is rank "
                              f"{rank} of {world}: partition into as many subdomains as there are processes")
        self.plan, self.group, self.mode, self.synchronize = plan, group, mode, synchronize
        self.send_counts = plan.send_counts.tolist()
        self.recv_counts = plan.recv_counts.tolist()
        self.peers = plan.peers
        self._index: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.stats = ExchangeStats()
        if verify:
            self._verify_counts()

    def _verify_counts(self) -> None:
        backend_device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend(self.group) == "nccl" else torch.device("cpu")
        send = torch.tensor(self.send_counts, dtype=torch.int64, device=backend_device)
        got = torch.empty_like(send)
        with collective("halo exchange (checking the plans' counts)", group=self.group):
            dist.all_to_all_single(got, send, group=self.group)  # got[q] = what q sends me
        expected = torch.tensor(self.recv_counts, dtype=torch.int64, device=backend_device)
        if not torch.equal(got, expected):
            bad = torch.nonzero(got != expected).flatten().tolist()
            raise DsmpnnError(
                f"rank {self.plan.rank}: peers {bad} send {got[bad].tolist()} halo rows but the plan expects "
                f"{expected[bad].tolist()}; every rank must build its plan from the same graph and partition")

    def _indices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._index:
            self._index[device] = (self.plan.tensor("send_rows", device), self.plan.tensor("recv_rows", device))
        return self._index[device]

    def _post(self, send: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> _Transfer:
        """Start sending ``send [sum(send_counts), C]`` to the peers in rank order and receiving
        ``[sum(recv_counts), C]`` rows (asynchronous; :meth:`_Transfer.wait` completes it)."""
        t0 = time.perf_counter()
        if self.synchronize and send.is_cuda:
            torch.cuda.synchronize(send.device)
        recv = send.new_empty((sum(recv_counts), *send.shape[1:]))
        waits: list[tuple[object, str, list[int] | None]] = []
        if self.mode == "all_to_all":
            with collective("halo exchange (all_to_all)", self.peers or None, group=self.group):
                work = dist.all_to_all_single(recv, send, output_split_sizes=recv_counts,
                                              input_split_sizes=send_counts, group=self.group, async_op=True)
            waits.append((work, "halo exchange (all_to_all)", self.peers or None))
        else:
            ops, op_peers = [], []
            s_off, r_off = [0, *accumulate(send_counts)], [0, *accumulate(recv_counts)]
            for q in self.peers:
                peer = q if self.group is None else dist.get_global_rank(self.group, q)
                if send_counts[q]:
                    ops.append(dist.P2POp(dist.isend, send[s_off[q]:s_off[q + 1]], peer, self.group))
                    op_peers.append((q, "send to"))
                if recv_counts[q]:
                    ops.append(dist.P2POp(dist.irecv, recv[r_off[q]:r_off[q + 1]], peer, self.group))
                    op_peers.append((q, "receive from"))
            if ops:
                with collective("halo exchange (p2p: posting sends and receives)", self.peers, group=self.group):
                    reqs = dist.batch_isend_irecv(ops)
                waits += [(req, f"halo exchange (p2p {how} rank {q})", [q])
                          for req, (q, how) in zip(reqs, op_peers)]
        self.stats.calls += 1
        self.stats.rows_sent += int(send.shape[0])
        self.stats.bytes_sent += send.numel() * send.element_size()
        self.stats.seconds += time.perf_counter() - t0
        return _Transfer(self, recv, waits)

    def _communicate(self, send: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
        """Rows ``send [sum(send_counts), C]`` go to the peers in rank order; returns ``[sum(recv_counts), C]``."""
        return self._post(send, send_counts, recv_counts).wait()

    def apply_forward(self, h: torch.Tensor) -> torch.Tensor:
        """E h without autograd: owned rows kept, halo rows replaced by the owners' rows."""
        self._check(h)
        send_rows, recv_rows = self._indices(h.device)
        recv = self._communicate(h.index_select(0, send_rows).contiguous(), self.send_counts, self.recv_counts)
        return h.index_copy(0, recv_rows, recv)  # [n_local, C]

    def apply_adjoint(self, g: torch.Tensor) -> torch.Tensor:
        """Eᵀ g: halo rows' values sent back to their owners and added there; halo rows zeroed."""
        self._check(g)
        send_rows, recv_rows = self._indices(g.device)
        back = self._communicate(g.index_select(0, recv_rows).contiguous(), self.recv_counts, self.send_counts)
        out = g.index_fill(0, recv_rows, 0)
        return out.index_add_(0, send_rows, back)  # [n_local, C]

    def start(self, h: torch.Tensor) -> HaloHandle:
        """Send the owned rows of ``h [n_local, C]`` its peers need and post the receives, without waiting
        (differentiable); :meth:`finish` completes it. The rows received are E h's halo rows."""
        self._check(h)
        handle = HaloHandle()
        handle.recv = _Start.apply(h, self, handle)  # [R, C], filled when the transfer completes
        return handle

    def finish(self, h: torch.Tensor, handle: HaloHandle) -> torch.Tensor:
        """``E h`` from the rows ``handle`` received: waits for them (the first time only), then overwrites the
        halo rows of ``h``, the tensor given to :meth:`start` (differentiable)."""
        self._check(h)
        return _Finish.apply(h, handle.recv, self, handle)  # [n_local, C]

    def _post_adjoint(self, g_recv: torch.Tensor) -> _Transfer:
        """Start sending the halo rows' gradients ``g_recv [R, C]`` back to their owners (receiving the owned rows'
        ``[S, C]``)."""
        return self._post(g_recv.contiguous(), self.recv_counts, self.send_counts)

    def _owned_gradient(self, back: torch.Tensor) -> torch.Tensor:
        """``back [S, C]`` (the peers' gradients of the rows this rank sent) added into zeros [n_local, C]."""
        send_rows, _ = self._indices(back.device)
        return back.new_zeros((self.plan.num_local, *back.shape[1:])).index_add_(0, send_rows, back)

    def _check(self, h: torch.Tensor) -> None:
        if h.dim() < 1 or h.shape[0] != self.plan.num_local:
            raise DsmpnnError(f"rank {self.plan.rank}: exchange expects {self.plan.num_local} local rows "
                              f"({self.plan.num_owned} owned + {self.plan.num_halo} halo), got shape "
                              f"{tuple(h.shape)}")

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return _Exchange.apply(h, self)

    def bytes_per_exchange(self, channels: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes this rank sends per forward exchange of ``channels`` features."""
        return len(self.plan.send_rows) * channels * torch.empty((), dtype=dtype).element_size()


class LayerExchange:
    """The ``exchange(h, layer)`` callable of :meth:`dsmpnn.nn.MPNN.forward`: refreshes halo rows before layers
    0, k, 2k, ... with ``k = every`` (default ``plan.halo_hops``: a k-hop halo stays exact for k layers)."""

    def __init__(self, halo: HaloExchange, every: int | None = None) -> None:
        every = halo.plan.halo_hops if every is None else every
        if not 1 <= every <= halo.plan.halo_hops:
            raise DsmpnnError(f"exchange interval {every} must lie in [1, halo_hops={halo.plan.halo_hops}]: a "
                              f"{halo.plan.halo_hops}-hop halo is exact for at most that many layers")
        self.halo, self.every = halo, every

    @property
    def stats(self) -> ExchangeStats:
        return self.halo.stats

    def __call__(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        return self.halo(h) if layer % self.every == 0 else h


class OverlappedLayerExchange(LayerExchange):
    """A :class:`LayerExchange` that the MPNN overlaps with its layers (:class:`dsmpnn.nn.OverlappedExchange`):
    ``start(h, layer)`` sends before layers 0, k, 2k, ... and returns the handle (None before the others),
    ``finish(h, handle)`` waits and returns E h. Every exchange overwrites the halo rows, which a
    :class:`~dsmpnn.graph.HaloPlan` numbers after the owned ones, so ``first_halo_row`` is ``plan.num_owned``:
    with ``halo_hops = k`` every ring 1..k is received, and with a geometric overlap the whole overlap."""

    def __init__(self, halo: HaloExchange, every: int | None = None) -> None:
        super().__init__(halo, every)
        plan = halo.plan
        if not np.array_equal(plan.recv_rows, np.arange(plan.num_owned, plan.num_local)):
            raise DsmpnnError(f"rank {plan.rank}: the halo plan receives rows other than its halo rows "
                              f"{plan.num_owned}..{plan.num_local - 1}; the overlapped exchange cannot split its edges")
        self.first_halo_row = plan.num_owned

    def start(self, h: torch.Tensor, layer: int) -> HaloHandle | None:
        return self.halo.start(h) if layer % self.every == 0 else None

    def finish(self, h: torch.Tensor, handle: HaloHandle) -> torch.Tensor:
        return self.halo.finish(h, handle)


def make_exchange(plan: HaloPlan, group: dist.ProcessGroup | None = None, mode: str = "all_to_all",
                  every: int | None = None, verify: bool = True, overlap: bool = False) -> LayerExchange | None:
    """The ``exchange(h, layer)`` callable for ``model(x, edge_index, edge_attr, exchange=...)`` on this rank;
    with ``overlap`` an :class:`OverlappedLayerExchange`, which the MPNN runs while it computes the edges
    whose source is owned (``distributed.overlap_comm``).

    None for a one-rank plan without a process group: the model then runs as the single-process S-MPNN, so
    training code can call this unconditionally. ``verify``: check the plans' counts first (see
    :class:`HaloExchange`; a collective, so every rank passes the same value).
    """
    if plan.nparts == 1 and not dist.is_initialized():
        return None
    return (OverlappedLayerExchange if overlap else LayerExchange)(HaloExchange(plan, group, mode, verify=verify),
                                                                   every)
