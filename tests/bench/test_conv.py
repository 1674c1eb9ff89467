"""The ECConv benchmark runs end to end on a tiny graph and counts what it says it counts."""

import torch

from dsmpnn.bench import bench_conv, ecconv_flops, format_table, peak_memory
from dsmpnn.nn.kernels import backend


def test_bench_conv_small():
    # 32 channels: PyG's mean then takes a scatter path that refuses the int32 ids of our radius graphs
    result = bench_conv(nodes=300, radius=0.1, channels=32, hidden=8, repeats=1, dense_size=64, edge_chunk=64)
    assert result["graph"]["edges"] > 0 and result["graph"]["chunks"] > 1
    assert result["max_abs_diff"] < 1e-4
    for name in ("ecconv", "nnconv"):
        assert result[name]["forward_s"] > 0 and result[name]["backward_s"] > 0
        assert result[name]["peak_bytes"] >= 0
    assert set(result["ratios"]) >= {"speedup_total", "memory_ratio"}
    assert "ECConv" in format_table(result)
    ec, dense = result["ecconv"], result["dense"]
    assert len(ec["forward_times_s"]) == len(dense["round_times_s"]) * result["config"]["ecconv_calls"]
    assert 0 < ec["time_over_dense_equivalent_paired"] <= ec["time_over_dense_equivalent_paired_median"]
    assert result["config"]["ecconv_path"] == backend.choose_backend(torch.device("cpu"), torch.float32)
    assert f"path={result['config']['ecconv_path']}" in format_table(result)


def test_bench_conv_compares_the_cpu_paths_in_the_same_run():
    result = bench_conv(nodes=300, radius=0.1, channels=4, hidden=8, repeats=1, dense_size=64, edge_chunk=64,
                        nnconv=False, with_bmm=True)
    assert result["ecconv_bmm"]["total_s"] > 0 and result["fused_speedup"]["total"] > 0
    assert result["fused_vs_bmm_max_abs_diff"] < 1e-4
    assert "bmm path" in format_table(result)
    assert backend.FUSED is None  # the switch is restored


def test_ecconv_flops_by_hand():
    # N=10, E=30, S=8, C_in=2, C_out=3, kernel 4 -> 5
    f = ecconv_flops(10, 30, 8, 2, 3, [4, 5])
    mlp, q, msg, root = 2 * 30 * 4 * 5, 2 * 8 * 2 * 6 * 3, 2 * 30 * 5 * 3, 2 * 10 * 2 * 3
    assert f == {"forward": mlp + q + msg + root, "backward": mlp + 2 * q + 2 * msg + 2 * root,
                 "recompute": q + mlp}


def test_peak_memory_sees_a_temporary():
    def fn():
        a = torch.ones(2_000_000)  # 8 MB, freed before returning
        return float(a.sum())

    peak, method = peak_memory(fn)
    assert method in ("rss", "profiler")
    assert 7e6 < peak < 4e7
