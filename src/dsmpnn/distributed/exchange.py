r"""Halo exchange: overwrite halo rows with their owners' current values, as an autograd function.

Let :math:`E` be the exchange as a linear map on the stacked local features of all ranks. Forward,
:math:`(E h)_p = h_p` on owned rows and :math:`h_{\mathrm{owner}(v)}[v]` on each halo row v. Backward applies
:math:`E^\top`: the halo rows' gradients travel back to the owners and are ADDED to the owned rows (a node that
is halo on several ranks collects every contribution); the halo rows' own gradient is zero, since their
incoming values were discarded.

The exchange is graph-agnostic: it only moves the rows a :class:`~dsmpnn.graph.HaloPlan` names, with one
``all_to_all_single`` (default) or batched point-to-point sends and receives between neighbouring ranks only
(``mode="p2p"``, fewer messages when P is large). Both work with gloo (CPU) and NCCL (CUDA).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.distributed as dist

from dsmpnn.distributed.process_group import collective
from dsmpnn.errors import DsmpnnError
from dsmpnn.graph.halo import HaloPlan

__all__ = ["HaloExchange", "LayerExchange", "ExchangeStats", "make_exchange", "EXCHANGE_MODES"]

EXCHANGE_MODES = ("all_to_all", "p2p")


@dataclass
class ExchangeStats:
    """Counters of one rank's exchanges (forward and backward together)."""

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

    def _communicate(self, send: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
        """Rows ``send [sum(send_counts), C]`` go to the peers in rank order; returns ``[sum(recv_counts), C]``."""
        t0 = time.perf_counter()
        if self.synchronize and send.is_cuda:
            torch.cuda.synchronize(send.device)
        recv = send.new_empty((sum(recv_counts), *send.shape[1:]))
        if self.mode == "all_to_all":
            with collective("halo exchange (all_to_all)", self.peers or None, group=self.group):
                dist.all_to_all_single(recv, send, output_split_sizes=recv_counts, input_split_sizes=send_counts,
                                       group=self.group)
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
                for req, (q, what) in zip(reqs, op_peers):
                    with collective(f"halo exchange (p2p {what} rank {q})", [q], group=self.group):
                        req.wait()
        if self.synchronize and send.is_cuda:
            torch.cuda.synchronize(send.device)
        self.stats.calls += 1
        self.stats.rows_sent += int(send.shape[0])
        self.stats.bytes_sent += send.numel() * send.element_size()
        self.stats.seconds += time.perf_counter() - t0
        return recv

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


def make_exchange(plan: HaloPlan, group: dist.ProcessGroup | None = None, mode: str = "all_to_all",
                  every: int | None = None, verify: bool = True) -> LayerExchange | None:
    """The ``exchange(h, layer)`` callable for ``model(x, edge_index, edge_attr, exchange=...)`` on this rank.

    None for a one-rank plan without a process group: the model then runs as the single-process S-MPNN, so
    training code can call this unconditionally. ``verify``: check the plans' counts first (see
    :class:`HaloExchange`; a collective, so every rank passes the same value).
    """
    if plan.nparts == 1 and not dist.is_initialized():
        return None
    return LayerExchange(HaloExchange(plan, group, mode, verify=verify), every)
