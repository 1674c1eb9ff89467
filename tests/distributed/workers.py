"""Problems and per-rank programs shared by the distributed tests (module level, so spawned ranks import them).

Every function that takes ``ctx`` runs on each rank of a group started by ``run_processes``; it runs many cases
in one launch (spawning is the slow part) and returns what the parent compares with one process.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dsmpnn.distributed import (DistContext, HaloExchange, LocalShard, all_reduce_sum, broadcast_parameters,
                                make_exchange, make_shard)
from dsmpnn.errors import DsmpnnError
from dsmpnn.graph import (Graph, build_graph, build_halo_plans, build_overlap_plans, build_sampled_plans,
                          edge_attributes, partition, sample_nodes)
from dsmpnn.nn import MPNN
from dsmpnn.train.step import StepGraph, run_step

DATASETS = ("cloud2d", "cloud3d", "grid")
CAPS = {"gridcap": 5}
"""Problems whose graph has a neighbour cap: on a grid, which of the equidistant neighbours the cap keeps is the
k-d tree's choice."""
ADAM_STEPS, ADAM_LR = 5, 1e-3
SAMPLE_SEED, SAMPLE_SIZE = 7, 180


def problem(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(pos [N, d], x [N, 3], y [N, 2], radius) of a named test problem."""
    rng = np.random.default_rng(len(name))
    if name == "cloud2d":
        pos, r = rng.random((300, 2)), 0.12
    elif name == "cloud3d":
        pos, r = rng.random((250, 3)), 0.25
    elif name in ("grid", "gridcap"):
        h = 1 / 15
        pos, r = np.stack(np.meshgrid(np.arange(16) * h, np.arange(16) * h, indexing="ij"), -1).reshape(-1, 2), 1.5 * h
    else:
        raise ValueError(name)
    x = np.column_stack([np.sin(3 * pos[:, 0]), pos[:, 1] ** 2, rng.standard_normal(len(pos))])
    y = np.column_stack([np.cos(2 * pos.sum(1)), rng.standard_normal(len(pos))])
    return pos, x, y, r


def model_for(dim: int, dtype: torch.dtype) -> MPNN:
    """A tiny 3-layer MPNN with LayerNorm, the same weights everywhere (seeded)."""
    torch.manual_seed(0)
    return MPNN(3, 2, dim + 1, hidden=8, layers=3, kernel_hidden=(8,), encoder_hidden=(8,), decoder_hidden=(8,),
                layer_norm=True).to(dtype)


def case_graph(name: str, dtype: torch.dtype) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, Graph]:
    pos, x, y, r = problem(name)
    graph = build_graph(pos, r, CAPS.get(name), dtype=dtype)
    return pos, torch.as_tensor(x, dtype=dtype), torch.as_tensor(y, dtype=dtype), graph


def single_process(model: MPNN, graph: Graph, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The reference: one forward + MSE backward on the whole graph."""
    model.zero_grad(set_to_none=True)
    out = model(x, graph.edge_index, graph.edge_attr)
    loss = F.mse_loss(out, y)
    loss.backward()
    return {"pred": out.detach(), "loss": loss.item(),
            "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}


def step_on_shard(model, shard: LocalShard, mode: str = "all_to_all", overlap: bool = False):
    """The one training step (dsmpnn.train.step.run_step) on this rank's shard, the prediction gathered;
    ``overlap``: the exchange overlapped with the layers' work (distributed.overlap_comm)."""
    exchange = make_exchange(shard.plan, mode=mode, overlap=overlap)
    return run_step(model, [StepGraph.from_shard(shard, exchange)], gather=True)


def _dist_result(ctx, model, plan, graph, x, y, mode="all_to_all", overlap=False):
    broadcast_parameters(model)
    res = step_on_shard(model, make_shard(plan, graph, x, y), mode, overlap)
    if not ctx.is_main:
        return None
    return {"pred": res.outputs, "loss": res.loss,
            "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}


def exactness(ctx: DistContext, cases: list[tuple[str, str, int, str]], mode: str = "all_to_all",
              overlap: bool = False) -> dict | None:
    """Forward + backward of every (problem, method, halo_hops, dtype) case on this rank's subdomain."""
    out = {}
    for name, method, hops, dtype_name in cases:
        dtype = getattr(torch, dtype_name)
        pos, x, y, graph = case_graph(name, dtype)
        owner = partition(pos, ctx.world_size, method, graph.edge_index.numpy())
        plan = build_halo_plans(owner, graph.edge_index, hops)[ctx.rank]
        out[(name, method, hops, dtype_name)] = _dist_result(ctx, model_for(pos.shape[1], dtype), plan, graph, x, y,
                                                             mode, overlap)
    return out if ctx.is_main else None


def overlap_case(ctx: DistContext, overlap_comm: bool = False) -> dict | None:
    """Geometric overlap l = r (the paper's DS-MPNN subdomains), exchange before every layer."""
    pos, x, y, graph = case_graph("cloud2d", torch.float64)
    r = problem("cloud2d")[3]
    owner = partition(pos, ctx.world_size, "slab")
    plan = build_overlap_plans(owner, graph.edge_index, pos, overlap=r, radius=r)[ctx.rank]
    return _dist_result(ctx, model_for(2, torch.float64), plan, graph, x, y, overlap=overlap_comm)


def rank_local_data(ctx: DistContext) -> dict | None:
    """A rank that holds only its subdomain: owned x and y, positions of its local rows (no global arrays)."""
    pos, x, y, graph = case_graph("cloud3d", torch.float64)
    r = problem("cloud3d")[3]
    plan = build_halo_plans(partition(pos, ctx.world_size, "metis", graph.edge_index.numpy()),
                            graph.edge_index, 2)[ctx.rank]
    owned = plan.tensor("owned")
    attr = edge_attributes(torch.as_tensor(pos[plan.local_nodes]), plan.edge_index, r)  # float64, as build_graph
    shard = LocalShard.from_owned(plan, x[owned], attr.to(torch.float64), y[owned])
    model = model_for(3, torch.float64)
    res = step_on_shard(model, shard)
    if not ctx.is_main:
        return None
    return {"pred": res.outputs, "loss": res.loss, "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}


def sampled_graph(name: str, dtype: torch.dtype) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, float]:
    """(sample ids, x, y, radius) of the Nyström sample every rank draws with the one global seed."""
    pos, x, y, r = problem(name)
    ids = sample_nodes(len(pos), SAMPLE_SIZE, np.random.default_rng(SAMPLE_SEED))
    return ids, torch.as_tensor(x[ids], dtype=dtype), torch.as_tensor(y[ids], dtype=dtype), 1.3 * r


def sampled_case(ctx: DistContext, overlap_comm: bool = False) -> dict | None:
    """Sampled graph in DS mode: same seed on every rank, the full mesh's partition, halo_hops 2."""
    pos = problem("cloud2d")[0]
    ids, x, y, r = sampled_graph("cloud2d", torch.float64)
    owner = partition(pos, ctx.world_size, "rcb")
    dec = build_sampled_plans(pos, ids, owner, r, halo_hops=2, dtype=torch.float64)
    return _dist_result(ctx, model_for(2, torch.float64), dec.plans[ctx.rank], dec.graph, x, y,
                        overlap=overlap_comm)


def adam(ctx: DistContext, name: str, method: str, hops: int, dtype_name: str) -> dict | None:
    """ADAM_STEPS Adam steps with the distributed loss and summed gradients; the final parameters and losses."""
    dtype = getattr(torch, dtype_name)
    pos, x, y, graph = case_graph(name, dtype)
    owner = partition(pos, ctx.world_size, method, graph.edge_index.numpy())
    plan = build_halo_plans(owner, graph.edge_index, hops)[ctx.rank]
    model = model_for(pos.shape[1], dtype)
    broadcast_parameters(model)
    opt = torch.optim.Adam(model.parameters(), lr=ADAM_LR)
    shard, exchange = make_shard(plan, graph, x, y), make_exchange(plan)
    losses = []
    for _ in range(ADAM_STEPS):
        opt.zero_grad(set_to_none=True)
        losses.append(run_step(model, [StepGraph.from_shard(shard, exchange)]).loss)
        opt.step()
    return {"losses": losses, "params": {n: p.detach().clone() for n, p in model.named_parameters()}}


def adam_single(name: str, dtype_name: str) -> dict:
    dtype = getattr(torch, dtype_name)
    pos, x, y, graph = case_graph(name, dtype)
    model = model_for(pos.shape[1], dtype)
    opt = torch.optim.Adam(model.parameters(), lr=ADAM_LR)
    losses = []
    for _ in range(ADAM_STEPS):
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x, graph.edge_index, graph.edge_attr), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"losses": losses, "params": {n: p.detach().clone() for n, p in model.named_parameters()}}


def adjoint(ctx: DistContext, mode: str, hops: int = 2) -> dict:
    """<E x, y> and <x, E^T y> summed over ranks on random tensors; E's forward on known values."""
    pos, _, _, graph = case_graph("cloud2d", torch.float64)
    plan = build_halo_plans(partition(pos, ctx.world_size, "rcb"), graph.edge_index, hops)[ctx.rank]
    ex = HaloExchange(plan, mode=mode)
    gen = torch.Generator().manual_seed(100 + ctx.rank)
    x = torch.randn(plan.num_local, 5, dtype=torch.float64, generator=gen)
    y = torch.randn(plan.num_local, 5, dtype=torch.float64, generator=gen)
    ex_x, et_y = ex.apply_forward(x), ex.apply_adjoint(y)
    lhs = float(all_reduce_sum((ex_x * y).sum()))
    rhs = float(all_reduce_sum((x * et_y).sum()))
    xr = x.clone().requires_grad_()
    (ex(xr) * y).sum().backward()  # the autograd path is E^T
    ids = plan.tensor("local_nodes").double()[:, None] * torch.tensor([1.0, -2.0, 0.5])
    stale = ids.clone()
    stale[plan.num_owned:] = -7.0  # halo rows hold stale values before the exchange
    return {"lhs": lhs, "rhs": rhs, "autograd_is_adjoint": torch.equal(xr.grad, et_y),
            "forward_fills_halo": torch.equal(ex(stale), ids), "input_untouched": bool((stale[plan.num_owned:] == -7).all()),
            "calls": ex.stats.calls, "bytes": ex.stats.bytes_sent, "sent": len(plan.send_rows),
            "received": plan.num_halo}


def refusals(ctx: DistContext) -> dict:
    """Plans that do not fit the group are refused on every rank with a clear message, without hanging."""
    pos, _, _, graph = case_graph("cloud2d", torch.float64)
    msgs = {}
    plans3 = build_halo_plans(partition(pos, 3, "rcb"), graph.edge_index)
    try:
        HaloExchange(plans3[ctx.rank])
    except DsmpnnError as err:
        msgs["world"] = str(err)
    owner = partition(pos, ctx.world_size, "rcb")
    mine = build_halo_plans(owner, graph.edge_index, halo_hops=1 + ctx.rank)[ctx.rank]  # ranks disagree
    try:
        HaloExchange(mine)
    except DsmpnnError as err:
        msgs["mismatch"] = str(err)
    ok = build_halo_plans(owner, graph.edge_index)[ctx.rank]
    try:
        HaloExchange(ok)(torch.zeros(ok.num_owned, 4))
    except DsmpnnError as err:
        msgs["rows"] = str(err)
    return msgs


def backward_order(ctx: DistContext, checkpoint_layers: bool) -> dict:
    """The backward calls of one overlapped step, in order: the exchange's two halves ("finish": the halo rows'
    gradients sent; "start": received and added) and the aggregations (with their edge counts)."""
    from dsmpnn.distributed import exchange as ex_module
    from dsmpnn.nn.kernels import grouped

    pos, x, y, graph = case_graph("cloud2d", torch.float64)
    plan = build_halo_plans(partition(pos, ctx.world_size, "rcb"), graph.edge_index)[ctx.rank]
    model = model_for(2, torch.float64)
    model.checkpoint_layers = checkpoint_layers
    log: list = []
    patched = {cls: cls.backward for cls in (ex_module._Start, ex_module._Finish, grouped._GroupedAggregate)}
    names = {ex_module._Start: "start", ex_module._Finish: "finish"}

    def logging(cls):
        def backward(fctx, *grads):
            log.append(names.get(cls) or fctx.plan.num_edges)
            return patched[cls](fctx, *grads)
        return staticmethod(backward)

    for cls in patched:
        cls.backward = logging(cls)
    try:
        step_on_shard(model, make_shard(plan, graph, x, y), overlap=True)
    finally:
        for cls, fn in patched.items():
            cls.backward = staticmethod(fn)
    interior = int((plan.edge_index[0] < plan.num_owned).sum())
    return {"log": log, "interior": interior, "boundary": plan.num_edges - interior}


def group_of(P: int) -> list:
    """Everything one launch of P ranks runs: [(key, function, args), ...]."""
    full = [(n, m, k, d) for n in DATASETS for m in ("slab", "rcb", "metis") for k in (1, 2)
            for d in ("float64", "float32")]
    overlapped = [(n, m, k, d) for n in ("cloud2d", "gridcap") for m in ("slab", "rcb", "metis") for k in (1, 2)
                  for d in ("float64", "float32")] + [("cloud3d", "metis", 2, "float64")]
    if P == 2:
        return [("exact", exactness, (full,)), ("adam32", adam, ("cloud2d", "metis", 2, "float32")),
                ("adam64", adam, ("grid", "rcb", 1, "float64")), ("overlap", overlap_case, ()),
                ("refusals", refusals, ()), ("adjoint_a2a", adjoint, ("all_to_all",)),
                ("rank_local", rank_local_data, ()),
                ("exact_overlap", exactness, (overlapped, "all_to_all", True)),
                ("overlap_comm_geometric", overlap_case, (True,)),
                ("backward_order", backward_order, (False,)), ("backward_order_ckpt", backward_order, (True,))]
    if P == 3:
        return [("exact", exactness, ([c for c in full if c[3] == "float64" or c[0] == "cloud3d"],)),
                ("exact_p2p", exactness, ([("cloud2d", "metis", 2, "float64")], "p2p")),
                ("sampled", sampled_case, ()), ("adjoint_a2a", adjoint, ("all_to_all",)),
                ("adjoint_p2p", adjoint, ("p2p", 1)),
                ("exact_overlap", exactness, ([c for c in overlapped if c[3] == "float64"], "all_to_all", True)),
                ("exact_overlap_p2p", exactness, ([("gridcap", "metis", 2, "float64")], "p2p", True)),
                ("sampled_overlap", sampled_case, (True,))]
    return [("exact", exactness, ([c for c in full if c[0] != "cloud3d" and c[2] == 2],)),
            ("adjoint_p2p", adjoint, ("p2p",))]


def run_group(ctx: DistContext, P: int) -> dict:
    return {key: fn(ctx, *args) for key, fn, args in group_of(P)}
