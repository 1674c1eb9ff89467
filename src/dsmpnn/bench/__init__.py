"""Benchmarks as library functions (the CLI and the scripts in benchmarks/ are thin shells over them)."""

from dsmpnn.bench.conv import bench_conv, ecconv_flops, format_table
from dsmpnn.bench.measure import Timing, dense_matmul_gflops, peak_memory, peak_tensor_bytes, time_calls
from dsmpnn.bench.scale import bench_scale, fit_slopes, format_scale_table, plot_scale, scale_radius
from dsmpnn.bench.scaling_measure import run_scaling_model
from dsmpnn.bench.scaling_model import Machine, RankLoads, StepPrediction, predict_step, rank_loads
from dsmpnn.bench.scaling_report import format_report, plot_scaling_model

__all__ = ["Machine", "RankLoads", "StepPrediction", "Timing", "bench_conv", "bench_scale", "dense_matmul_gflops",
           "ecconv_flops", "fit_slopes", "format_report", "format_table", "format_scale_table", "peak_memory",
           "peak_tensor_bytes", "plot_scale", "plot_scaling_model", "predict_step", "rank_loads", "run_scaling_model",
           "scale_radius", "time_calls"]
