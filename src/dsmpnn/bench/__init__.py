"""Benchmarks as library functions (the CLI and the scripts in benchmarks/ are thin shells over them)."""

from dsmpnn.bench.conv import bench_conv, ecconv_flops, format_table
from dsmpnn.bench.measure import Timing, dense_matmul_gflops, peak_memory, peak_tensor_bytes, time_calls
from dsmpnn.bench.scale import bench_scale, fit_slopes, format_scale_table, plot_scale, scale_radius

__all__ = ["Timing", "bench_conv", "bench_scale", "dense_matmul_gflops", "ecconv_flops", "fit_slopes", "format_table",
           "format_scale_table", "peak_memory", "peak_tensor_bytes", "plot_scale", "scale_radius", "time_calls"]
