"""P gloo ranks on CPU equal one process: forward outputs, every parameter gradient, Adam steps, the exchange's
adjoint. One launch per P runs every case (tests/distributed/workers.py); the tests compare its results."""

from functools import lru_cache

import numpy as np
import pytest
import torch

from dsmpnn.distributed import TOLERANCE, HaloExchange, max_rel_diff, run_processes
from dsmpnn.errors import DsmpnnError, GraphError
from dsmpnn.graph import build_halo_plans, build_sampled_plans, partition
from dsmpnn.train.check import check
from tests.distributed import workers as W

pytestmark = pytest.mark.distributed

ADAM_TOL = 1e-5


@lru_cache(maxsize=None)
def launch(P: int) -> dict:
    return run_processes(W.run_group, P, (P,), timeout_s=120)


@lru_cache(maxsize=None)
def reference(name: str, dtype_name: str) -> dict:
    dtype = getattr(torch, dtype_name)
    pos, x, y, graph = W.case_graph(name, dtype)
    return W.single_process(W.model_for(pos.shape[1], dtype), graph, x, y)


@lru_cache(maxsize=None)
def sampled_reference() -> dict:
    """One process on the Nystrom-sampled graph of "cloud2d" that the workers' ``sampled_case`` decomposes."""
    pos = W.problem("cloud2d")[0]
    ids, x, y, r = W.sampled_graph("cloud2d", torch.float64)
    dec = build_sampled_plans(pos, ids, partition(pos, 3, "rcb"), r, dtype=torch.float64)
    return W.single_process(W.model_for(2, torch.float64), dec.graph, x, y)


def assert_equal_to_single(dist: dict, ref: dict, dtype_name: str) -> None:
    tol = TOLERANCE[getattr(torch, dtype_name)]
    assert max_rel_diff(dist["pred"], ref["pred"]) <= tol
    assert dist["loss"] == pytest.approx(ref["loss"], rel=tol)
    assert dist["grads"].keys() == ref["grads"].keys()
    worst = {n: max_rel_diff(dist["grads"][n], g) for n, g in ref["grads"].items()}
    assert max(worst.values()) <= tol, {n: d for n, d in worst.items() if d > tol}


def cases(P):
    return [pytest.param(P, c, id=f"P{P}-" + "-".join(map(str, c))) for key, fn, args in W.group_of(P)
            if key == "exact" for c in args[0]]


@pytest.mark.parametrize("P,case", cases(2) + cases(3) + cases(4))
def test_forward_and_gradients_equal_one_process(P, case):
    name, _, _, dtype_name = case
    assert_equal_to_single(launch(P)[0]["exact"][case], reference(name, dtype_name), dtype_name)


def test_point_to_point_mode_equals_one_process():
    case = ("cloud2d", "metis", 2, "float64")
    assert_equal_to_single(launch(3)[0]["exact_p2p"][case], reference("cloud2d", "float64"), "float64")


def test_geometric_overlap_of_radius_width_equals_one_process():
    assert_equal_to_single(launch(2)[0]["overlap"], reference("cloud2d", "float64"), "float64")


def test_rank_holding_only_its_subdomain_equals_one_process():
    assert_equal_to_single(launch(2)[0]["rank_local"], reference("cloud3d", "float64"), "float64")


def test_sampled_graph_in_ds_mode_equals_single_process_sampled_graph():
    assert_equal_to_single(launch(3)[0]["sampled"], sampled_reference(), "float64")


@pytest.mark.parametrize("P,key,name,dtype_name", [(2, "adam32", "cloud2d", "float32"),
                                                   (2, "adam64", "grid", "float64")])
def test_adam_steps_match_one_process(P, key, name, dtype_name):
    single = W.adam_single(name, dtype_name)
    tol = ADAM_TOL if dtype_name == "float32" else 1e-10
    for rank_result in launch(P):  # every rank took the same steps
        dist = rank_result[key]
        np.testing.assert_allclose(dist["losses"], single["losses"], rtol=tol)
        worst = max(max_rel_diff(dist["params"][n], p) for n, p in single["params"].items())
        assert worst <= tol
    init = dict(W.model_for(W.problem(name)[0].shape[1], getattr(torch, dtype_name)).named_parameters())
    assert max(max_rel_diff(p, init[n]) for n, p in single["params"].items()) > 100 * tol  # the steps moved


@pytest.mark.parametrize("P,key", [(2, "adjoint_a2a"), (3, "adjoint_a2a"), (3, "adjoint_p2p"), (4, "adjoint_p2p")])
def test_exchange_adjoint_and_forward(P, key):
    results = [r[key] for r in launch(P)]
    for r in results:
        assert r["lhs"] == pytest.approx(r["rhs"], rel=1e-12)  # <E x, y> = <x, E^T y>
        assert r["autograd_is_adjoint"] and r["forward_fills_halo"] and r["input_untouched"]
        # forward sends the owned rows, backward the halo rows: 2 of each with 5 channels, 1 forward with 3
        assert r["bytes"] == 8 * (5 * 2 * (r["sent"] + r["received"]) + 3 * r["sent"]) and r["calls"] == 5
    assert all(r["lhs"] == results[0]["lhs"] for r in results)  # a global quantity


def test_refusals_are_clear_and_do_not_hang():
    for msgs in (r["refusals"] for r in launch(2)):
        assert "plan is for rank" in msgs["world"] and "of 3" in msgs["world"]
        assert "every rank must build its plan from the same graph" in msgs["mismatch"]
        assert "local rows" in msgs["rows"]


def test_check_reports_round_off_differences():
    pos, x, _, r = W.problem("cloud2d")
    rep = check(pos, x, lambda: W.model_for(2, torch.float32), nproc=2, method="rcb", halo_hops=2,
                dtype=torch.float32, radius=r)
    assert rep["passed"] and rep["tolerance"] == 1e-5
    assert rep["output_max_rel_diff"] <= 1e-5 and rep["grad_max_rel_diff"] <= 1e-5
    assert set(rep["grad_rel_diff"]) == {n for n, _ in W.model_for(2, torch.float32).named_parameters()}
    assert rep["loss_distributed"] == pytest.approx(rep["loss_single"], rel=1e-5)


def test_too_many_ranks_and_no_process_group_are_refused():
    pos, x, _, r = W.problem("grid")
    with pytest.raises(GraphError, match="cannot split 256 nodes into 300 subdomains"):
        check(pos, x, W.model_for(2, torch.float64), nproc=300, method="slab", radius=r)
    plan = build_halo_plans(np.array([0, 0, 1, 1]), np.array([[0, 1, 2], [1, 2, 3]]))[0]
    with pytest.raises(DsmpnnError, match="initialised process group"):
        HaloExchange(plan)


def test_one_rank_without_process_group_is_the_single_process_model():
    """The one step function needs no process group for P = 1: it is the single-process step."""
    from dsmpnn.distributed import make_exchange, make_shard
    from dsmpnn.train.step import StepGraph, run_step

    pos, x, y, graph = W.case_graph("grid", torch.float64)
    plan = build_halo_plans(np.zeros(len(pos), dtype=np.int64), graph.edge_index)[0]
    assert make_exchange(plan) is None and plan.num_halo == 0
    shard = make_shard(plan, graph, x, y)
    model = W.model_for(2, torch.float64)
    ref = W.single_process(W.model_for(2, torch.float64), graph, x, y)
    with torch.no_grad():
        pred = run_step(model, [StepGraph.from_shard(shard, None)], backward=False, gather=True).outputs
    torch.testing.assert_close(pred, ref["pred"], rtol=0, atol=0)
    res = run_step(model, [StepGraph.from_shard(shard, None)], gather=True)
    assert res.loss == pytest.approx(ref["loss"], rel=1e-14) and res.nodes == len(pos) and not res.stop
    assert res.stats.exchange_calls == 0 and res.stats.graphs == 1 and res.stats.owned_rows == len(pos)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref["grads"][n], rtol=1e-13, atol=0)
