"""Benchmarks as library functions (the CLI and the scripts in benchmarks/ are thin shells over them)."""

from dsmpnn.bench.conv import bench_conv, ecconv_flops, format_table
from dsmpnn.bench.measure import Timing, dense_matmul_gflops, peak_memory, peak_tensor_bytes, time_calls

__all__ = ["Timing", "bench_conv", "dense_matmul_gflops", "ecconv_flops", "format_table", "peak_memory",
           "peak_tensor_bytes", "time_calls"]
