"""The scaling model's pure functions: fits on synthetic data, the halo count against the library's halo plans,
the surface-to-volume extrapolation on an exact power law, hand-checked exchange and all-reduce times, and
predictions that must be monotone. No timing, no processes."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from dsmpnn.bench.scaling_measure import gpu_machine, law_fits, loads_for, model_flops, predict_scenarios
from dsmpnn.bench.scaling_model import (ComputeCosts, Link, Machine, Network, RankLoads, crossover, efficiency,
                                        exchange_seconds, extrapolate_loads, fit_alpha_beta, fit_linear_costs,
                                        fit_power_law, predict_step, rank_loads, single_rank_loads)
from dsmpnn.bench.scaling_report import format_report, plot_scaling_model
from dsmpnn.graph import build_halo_plans, partition

SIZES = np.array([2.0**k for k in range(10, 27, 2)])  # 1 KiB .. 64 MiB


def test_fit_alpha_beta_reproduces_synthetic_data():
    t = 50e-6 + SIZES / 2e9
    link = fit_alpha_beta(SIZES, t)
    assert link.alpha_s == pytest.approx(50e-6, rel=1e-9) and link.beta_bytes_per_s == pytest.approx(2e9, rel=1e-9)
    noisy = t * np.random.default_rng(0).uniform(0.95, 1.05, t.size)  # 5 % noise: still close
    link = fit_alpha_beta(SIZES, noisy)
    assert link.alpha_s == pytest.approx(50e-6, rel=0.1) and link.beta_bytes_per_s == pytest.approx(2e9, rel=0.1)
    clipped = fit_alpha_beta(SIZES[3:], SIZES[3:] / 1e9 - 1e-7)  # a negative intercept is clipped to 0
    assert clipped.alpha_s == 0 and clipped.beta_bytes_per_s == pytest.approx(1e9, rel=0.01)
    with pytest.raises(ValueError, match="grow"):
        fit_alpha_beta(SIZES, 1e-3 - SIZES * 1e-12)


def test_fit_linear_costs_recovers_non_negative_coefficients():
    rng = np.random.default_rng(1)
    x = np.column_stack([np.ones(8), rng.uniform(1e3, 1e5, 8), rng.uniform(1e4, 2e6, 8)])
    theta = np.array([2e-3, 5e-6, 4e-7])
    assert fit_linear_costs(x, x @ theta) == pytest.approx(theta, rel=1e-8)


def test_power_law_fit_and_extrapolation_are_exact_for_an_exact_power_law():
    x = np.array([1e3, 1e4, 1e5, 1e6])
    assert fit_power_law(x, 3.2 * x**0.5) == pytest.approx((3.2, 0.5))
    assert fit_power_law(x, 7.0 * x ** (2 / 3), exponent=2 / 3) == pytest.approx((7.0, 2 / 3))
    for dim in (2, 3):  # a partition whose halo follows c (N/P)^((d-1)/d) exactly
        P, n0, c = 4, 10**5, 2.5
        h0 = c * (n0 / P) ** ((dim - 1) / dim)
        loads = RankLoads(nodes=n0, dim=dim, owned=np.full(P, n0 / P), halo=np.full(P, h0), edges=np.full(P, 16 * n0 / P),
                          cut_edges=np.full(P, 3 * h0), pair_recv=np.array([0, 1, 2, 3]),
                          pair_send=np.array([1, 0, 3, 2]), pair_rows=np.full(4, h0))
        big = extrapolate_loads(loads, 10**8)
        exact = c * (1e8 / P) ** ((dim - 1) / dim)
        assert big.halo == pytest.approx(np.full(P, exact), rel=1e-12)
        assert big.pair_rows == pytest.approx(np.full(4, exact), rel=1e-12)
        assert big.cut_edges == pytest.approx(np.full(P, 3 * exact), rel=1e-12)
        assert big.owned == pytest.approx(np.full(P, 1e8 / P)) and big.edges.sum() == pytest.approx(16e8)
        assert big.extrapolated_from == n0 and extrapolate_loads(big, 10**7).extrapolated_from == n0
        assert np.array_equal(big.peers, loads.peers) and extrapolate_loads(loads, n0) is loads


@pytest.mark.parametrize("method", ["slab", "rcb", "metis"])
def test_rank_loads_equal_the_library_halo_plans(method):
    pos = np.random.default_rng(2).random((2500, 2))
    pairs = cKDTree(pos).query_pairs(0.045, output_type="ndarray")
    edge_index = np.concatenate([pairs.T, pairs.T[::-1]], axis=1)  # both directions
    for P in (2, 5, 16):
        owner = partition(pos, P, method, edge_index)
        loads = rank_loads(owner, pairs.astype(np.int32), P, 2, method, chunk=1000)  # several chunks
        plans = build_halo_plans(owner, edge_index)
        assert loads.owned.tolist() == [p.num_owned for p in plans]
        assert loads.halo.tolist() == [p.num_halo for p in plans]
        assert loads.edges.tolist() == [p.num_edges for p in plans]
        assert loads.send_rows.tolist() == [len(p.send_rows) for p in plans]
        assert loads.peers.tolist() == [len(p.peers) for p in plans]
        assert loads.cut_edges.tolist() == [int((p.edge_index[0] >= p.num_owned).sum()) for p in plans]
        matrix = np.zeros((P, P), dtype=int)
        matrix[loads.pair_recv, loads.pair_send] = loads.pair_rows
        assert np.array_equal(matrix, np.stack([p.recv_counts for p in plans]))


def _two_way(rows_01: float, rows_10: float, P: int = 2) -> RankLoads:
    """Rank 0 receives rows_01 rows from rank 1, rank 1 rows_10 from rank 0 (other ranks idle)."""
    own = np.full(P, 100)
    return RankLoads(nodes=100 * P, dim=2, owned=own, halo=np.r_[rows_01, rows_10, np.zeros(P - 2)],
                     edges=own * 10, cut_edges=np.zeros(P), pair_recv=np.array([0, 1]), pair_send=np.array([1, 0]),
                     pair_rows=np.array([rows_01, rows_10]))


def test_exchange_and_allreduce_times_by_hand():
    net = Network(intra=Link(1e-3, 1e6), call_s=5e-4)
    ex = exchange_seconds(_two_way(10, 30), net, row_bytes=100)
    # each rank: call + one peer's latency + max(rows out, rows in) * 100 B / 1e6 B/s
    assert ex == pytest.approx([5e-4 + 1e-3 + 3e-3, 5e-4 + 1e-3 + 3e-3])
    dense = exchange_seconds(_two_way(10, 30, P=4), Network(intra=Link(1e-3, 1e6), dense_messages=True), 100)
    assert dense == pytest.approx([3e-3 + 3e-3, 3e-3 + 3e-3, 3e-3, 3e-3])  # 3 messages each, idle ranks too
    split = Network(intra=Link(1e-6, 1e9), inter=Link(1e-5, 1e8), ranks_per_node=1)  # ranks 0 and 1 on two nodes
    assert exchange_seconds(_two_way(10, 10), split, 100) == pytest.approx([1e-5 + 1e-5] * 2)
    ring = Network(intra=Link(2e-4, 1e9))
    assert ring.allreduce_seconds(1e6, 2) == pytest.approx(2 * 2e-4 + 1e6 / 1e9)
    assert ring.allreduce_seconds(1e6, 8) == pytest.approx(14 * 2e-4 + 2 * 7 / 8 * 1e6 / 1e9)
    assert ring.allreduce_seconds(1e6, 1) == 0
    tree = Network(intra=Link(3e-6, 4e11), inter=Link(1e-5, 4e10), ranks_per_node=8, call_s=2e-5, allreduce="tree")
    assert tree.allreduce_seconds(4e5, 64) == pytest.approx(2e-5 + 2 * (7 * 3e-6 + 3 * 1e-5) + 2 * 4e5 / 4e10)


def _cpu_like() -> Machine:
    costs = ComputeCosts(edge_s=4e-7, node_s=7e-6, layer_s=1e-3, rest_node_s=1e-6, step_s=1e-2, forward_fraction=0.3)
    return Machine("test", costs, Network(intra=Link(1e-3, 5e8)))


def _survey(n: int = 6000) -> dict:
    """Loads of an rcb partition of a small 2-D cloud (and of one 4x larger) for P = 2..64."""
    out = {}
    for nodes in (n, 4 * n):
        pos = np.random.default_rng(3).random((nodes, 2))
        pairs = cKDTree(pos).query_pairs(np.sqrt(16 / (np.pi * nodes)), output_type="ndarray")
        for P in (2, 4, 8, 16, 32, 64):
            out[(2, "rcb", P, nodes)] = rank_loads(partition(pos, P, "rcb"), pairs, P, 2, "rcb")
    return out


def test_predictions_are_monotone_where_they_must_be():
    survey, machine = _survey(), _cpu_like()
    parts = (2, 4, 8, 16, 32, 64)
    strong = [predict_step(loads_for(survey, 2, "rcb", P, 10**6), machine, 4, 32, 40_000) for P in parts]
    # strong scaling: each rank's compute shrinks with P, its exchange grows no faster than the volume
    assert all(a.compute_layer_s > b.compute_layer_s for a, b in zip(strong, strong[1:]))
    edges = loads_for(survey, 2, "rcb", 2, 10**6).edges.sum()  # the same graph on one rank
    single = predict_step(single_rank_loads(10**6, edges, 2), machine, 4, 32, 40_000)
    for pred in strong:  # communication and halo work only cost: efficiency below 1, overlap never slower
        assert efficiency(single.step_s, pred.step_s, pred.nparts, strong=True) < 1
        assert pred.step_overlap_s <= pred.step_s
    for P in parts:  # a larger mesh takes longer on the same P; a slower network makes every step longer
        a, b = (predict_step(loads_for(survey, 2, "rcb", P, n), machine, 4, 32, 40_000) for n in (10**6, 10**7))
        assert b.step_s > a.step_s and b.exchange_s > a.exchange_s
        slow = Machine("slow", machine.compute, Network(intra=Link(1e-2, 5e7)))
        assert predict_step(loads_for(survey, 2, "rcb", P, 10**6), slow, 4, 32, 40_000).step_s > a.step_s
    # the exchange overtakes the compute no earlier on a larger mesh
    cross = [crossover([predict_step(loads_for(survey, 2, "rcb", P, n), machine, 4, 32, 40_000) for P in parts])
             for n in (10**4, 10**5, 10**6)]
    assert [c or 10**9 for c in cross] == sorted(c or 10**9 for c in cross)


def test_scenarios_report_and_plot(tmp_path):
    """predict_scenarios on a small survey; the report and the plot render from the result alone."""
    survey = _survey(3000)
    flops = model_flops(32, 32)
    machines = [_cpu_like(), Machine("cpu-gloo-p2p", _cpu_like().compute, Network(intra=Link(1e-3, 5e8))),
                gpu_machine(flops, 0.3)]
    curves = predict_scenarios(survey, machines, 4, 32, 40_000, strong_nodes=(10**5, 10**6), weak_nodes=(10**4,),
                               parts=(1, 2, 8, 64))
    assert {c["machine"] for c in curves} == {m.name for m in machines}
    strong = [c for c in curves if c["scaling"] == "strong" and c["nodes"] == 10**6]
    assert all(c["efficiency"][0] == 1 and c["extrapolated_P"] == [2, 8, 64] for c in strong)
    fits = law_fits(survey)
    assert fits["2d/rcb"]["exponent"] == 0.5 and len(fits["2d/rcb"]["extrapolation_checks"]) == 6
    costs = vars(_cpu_like().compute)
    result = {"cpu_costs": costs, "settings": {"layers": 4},
              "exchange": {m: {"bytes": [1024, 4096], "median_s": [1e-3, 2e-3], "alpha_s": 1e-3,
                               "beta_bytes_per_s": 5e8, "fit_rel_error_max": 0.1} for m in ("all_to_all", "p2p")},
              "machines": [{"name": m.name, "compute": vars(m.compute)} for m in machines],
              "curves": curves, "law_fits": fits, "gpu_sensitivity": [], "measured_vs_predicted": None}
    text = format_report(result, (2, 8, 64))
    assert "| gloo p2p: alpha / beta | 1000 us / 0.50 GB/s" in text and "0.00*" not in text
    assert "crossover P" in text and "Extrapolation checks" in text
    png = plot_scaling_model(result, tmp_path / "m.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_model_command_help(capsys):
    from dsmpnn.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "model", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--measured" in out and "1024" in out


def test_survey_cache_round_trip(tmp_path):
    from dsmpnn.bench.scaling_measure import NEIGHBORS, load_survey, save_survey

    survey = _survey(1000)
    path = save_survey(survey, tmp_path / "s.npz", NEIGHBORS, 0)
    back = load_survey(path, NEIGHBORS, 0)
    assert back.keys() == survey.keys()
    for key, loads in survey.items():
        for name in ("owned", "halo", "edges", "cut_edges", "pair_recv", "pair_send", "pair_rows"):
            assert np.array_equal(getattr(back[key], name), getattr(loads, name))
    assert load_survey(path, {2: 10.0, 3: 24.0}, 0) == {} and load_survey(tmp_path / "none.npz", NEIGHBORS, 0) == {}


def test_run_scaling_model_end_to_end_on_tiny_meshes(tmp_path):
    """Measure (gloo exchange, ECConv, MPNN step), survey, predict and report on the smallest sizes the fits take."""
    from dsmpnn.bench.scaling_measure import run_scaling_model
    from dsmpnn.bench.scaling_report import format_report

    cache = tmp_path / "survey.npz"
    result = run_scaling_model(((2, 4000, ("rcb",), (2, 4)),), conv_points=((1500, 8), (1500, 16), (3000, 8)),
                               mpnn_nodes=(1500, 3000), exchange_sizes=(1024, 1 << 16), exchange_rounds=2,
                               survey_cache=cache, echo=None)
    assert set(result["exchange"]) >= {"all_to_all", "p2p", "all_reduce"}
    assert result["cpu_costs"]["edge_s"] > 0 and result["cpu_gflops_per_edge_work"] > 0
    assert [m["name"] for m in result["machines"]][:2] == ["cpu-gloo-all_to_all", "cpu-gloo-p2p"]
    assert len(result["survey"]) == 2 and cache.is_file()  # P = 2, 4 of the one mesh
    assert result["curves"] and result["measured_vs_predicted"] is None
    assert "crossover P" in format_report(result, (2, 4))
