"""The scaling model's report: Markdown tables and the efficiency plot of a result of
:func:`dsmpnn.bench.scaling_measure.run_scaling_model` (or of its saved JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dsmpnn.bench.scaling_model import efficiency

__all__ = ["format_report", "plot_scaling_model"]


def _prediction(curve: dict, P: int) -> dict:
    """The step prediction of ``curve`` at P ranks, as one dict (step times and the breakdown's terms)."""
    i = curve["P"].index(P)
    return {"P": P, "step_s": curve["step_s"][i], "step_overlap_s": curve["step_overlap_s"][i],
            **{k: v[i] for k, v in curve["breakdown"].items()}}



def _pick(curves: list[dict], **want) -> list[dict]:
    return [c for c in curves if all(c.get(k) == v for k, v in want.items())]


def _beyond(curve: dict) -> str:
    """How a crossover beyond the curve's last P reads in a table."""
    return f"> {curve['P'][-1]}"


def _row_head(cv: dict) -> str:
    """The first three cells of a curve's table row: machine, mesh, scaling and size."""
    size = f"N={cv['nodes']:.0e}" if cv["scaling"] == "strong" else f"N/P={cv['nodes_per_rank']:.0e}"
    return f"| {cv['machine']} | {cv['dim']}-D {cv['method']} | {cv['scaling']} {size} | "


def _at(curve: dict, key: str, P: int) -> float | None:
    return curve[key][curve["P"].index(P)] if P in curve["P"] else None


def format_report(result: dict, table_parts: Sequence[int] = (2, 8, 64, 256, 1024)) -> str:
    """Markdown: fitted constants, the efficiency tables (no overlap / overlap) and crossovers, the
    extrapolation checks, the sensitivity to the GPU throughput, and predicted vs measured."""
    return "\n".join(_constants(result) + _efficiencies(result, table_parts) + _breakdown(result, table_parts)
                     + _extrapolation(result) + _sensitivity(result, table_parts[-1]) + _measured(result))


def _constants(result: dict) -> list[str]:
    """The fitted compute constants, the gloo fits and the exchange timings."""
    lines: list[str] = []
    c = result["cpu_costs"]
    lines += ["| constant | value |", "|---|---|",
              f"| ECConv layer fwd+bwd, per edge t_e | {c['edge_s'] * 1e9:.1f} ns |",
              f"| per local row t_n | {c['node_s'] * 1e9:.1f} ns |",
              f"| per layer call t_0 | {c['layer_s'] * 1e3:.2f} ms |",
              f"| rest of the step per row t_r | {c['rest_node_s'] * 1e9:.1f} ns |",
              f"| per step t_s | {c['step_s'] * 1e3:.1f} ms |",
              f"| forward share f | {c['forward_fraction']:.2f} |"]
    for mode, r in result["exchange"].items():
        lines.append(f"| gloo {mode}: alpha / beta | {r['alpha_s'] * 1e6:.0f} us / "
                     f"{r['beta_bytes_per_s'] / 1e9:.2f} GB/s (max fit error {100 * r['fit_rel_error_max']:.0f} %) |")
    lines.append("")
    lines += ["| message [bytes] | " + " | ".join(f"{mode} median [us]" for mode in result["exchange"]) + " |",
              "|---|" + "---|" * len(result["exchange"])]
    modes = list(result["exchange"])
    for i, b in enumerate(result["exchange"][modes[0]]["bytes"]):
        lines.append(f"| {b:,} | " + " | ".join(f"{result['exchange'][m]['median_s'][i] * 1e6:,.0f}" for m in modes)
                     + " |")
    lines.append("")
    return lines


def _efficiencies(result: dict, table_parts: Sequence[int]) -> list[str]:
    """Parallel efficiency per curve at ``table_parts``, without and with overlap, and the crossover P."""
    lines: list[str] = []
    hdr = " | ".join(f"P={P}" for P in table_parts)
    for title, key_eff, cross_what in (("no overlap", "efficiency", "compute"),
                                       ("overlap", "efficiency_overlap", "interior compute")):
        lines += [f"Parallel efficiency, {title}:", "",
                  f"| machine | mesh | scaling | {hdr} | crossover P (exchange > {cross_what}) |",
                  "|---|---|---|" + "---|" * len(table_parts) + "---|"]
        for cv in result["curves"]:
            cells = []
            for P in table_parts:
                v = _at(cv, key_eff, P)
                mark = "*" if P in cv["extrapolated_P"] else ""
                cells.append("-" if v is None else f"{v:.2f}{mark}")
            cross = cv["crossover_P_overlap" if key_eff.endswith("overlap") else "crossover_P"]
            lines.append(_row_head(cv) + " | ".join(cells) + f" | {cross or _beyond(cv)} |")
        lines.append("")
    lines.append("`*`: halo volumes extrapolated by the surface-to-volume law from a smaller partitioned mesh.")
    lines.append("")
    return lines


def _breakdown(result: dict, table_parts: Sequence[int]) -> list[str]:
    """Where a step's time goes at the largest P of ``table_parts`` (the GPU and p2p machines)."""
    lines: list[str] = []
    layers = result["settings"]["layers"]
    lines += [f"Where a step's time goes at P = {table_parts[-1]} (no overlap; ms): compute = {layers} layers' "
              "compute incl. their fixed overhead; exchange = 2 per layer; E without comm. = the efficiency if "
              "exchange and all-reduce were free:", "",
              "| machine | mesh | scaling | step | compute | of which fixed overhead | exchange | all-reduce | "
              "rest | E | E without comm. |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cv in result["curves"]:
        if cv["machine"] == "cpu-gloo-all_to_all" or table_parts[-1] not in cv["P"]:
            continue
        p = _prediction(cv, table_parts[-1])
        m = next(m for m in result["machines"] if m["name"] == cv["machine"])
        comm = layers * p["exchange_layer_s"] + p["allreduce_s"]
        t1 = cv["step_s"][0]
        e_free = efficiency(t1, p["step_s"] - comm, p["P"], cv["scaling"] == "strong")
        lines.append(_row_head(cv) +
                     f"{p['step_s'] * 1e3:.3g} | {layers * p['compute_layer_s'] * 1e3:.3g} | "
                     f"{layers * m['compute']['layer_s'] * 1e3:.3g} | {layers * p['exchange_layer_s'] * 1e3:.3g} | "
                     f"{p['allreduce_s'] * 1e3:.3g} | {p['rest_s'] * 1e3:.3g} | "
                     f"{_at(cv, 'efficiency', table_parts[-1]):.2f} | {e_free:.2f} |")
    lines.append("")
    return lines


def _extrapolation(result: dict) -> list[str]:
    """The checks of the surface-to-volume extrapolation and the fitted law per mesh."""
    lines: list[str] = []
    lines += ["Extrapolation checks (loads of the largest mesh predicted from the next smaller one, same P):", "",
              "| mesh | P | from N | to N | max halo | max send rows | max cut edges |",
              "|---|---|---|---|---|---|---|"]
    for key, fit in result["law_fits"].items():
        for ch in fit["extrapolation_checks"]:
            lines.append(f"| {key} | {ch['P']} | {ch['from_N']:.0e} | {ch['to_N']:.0e} | "
                         f"{100 * ch['halo_max_rel_error']:+.1f} % | {100 * ch['send_rows_max_rel_error']:+.1f} % | "
                         f"{100 * ch['cut_edges_max_rel_error']:+.1f} % |")
    lines.append("")
    lines += ["| mesh | c, exponent fixed | c, e free (P >= 16) |", "|---|---|---|"]
    for key, fit in result["law_fits"].items():
        lines.append(f"| {key} | {fit['c_fixed_exponent']:.2f} (e = {fit['exponent']:.3f}) | "
                     f"{fit['c_free']:.2f}, e = {fit['exponent_free']:.3f} |")
    lines.append("")
    return lines


def _sensitivity(result: dict, last: int) -> list[str]:
    """Efficiency at P = ``last`` for other GPU throughputs (none without them)."""
    lines: list[str] = []
    if result.get("gpu_sensitivity"):
        lines += [f"GPU throughput sensitivity (efficiency at P = {last} without / with overlap; crossover P):", "",
                  f"| machine | mesh | scaling | E({last}) | E({last}) overlap | crossover P |",
                  "|---|---|---|---|---|---|"]
        for cv in result["gpu_sensitivity"] + _pick(result["curves"], machine=result["machines"][-1]["name"]):
            e, eo = _at(cv, "efficiency", last), _at(cv, "efficiency_overlap", last)
            lines.append(_row_head(cv) +
                         f"{'-' if e is None else f'{e:.2f}'} | {'-' if eo is None else f'{eo:.2f}'} | "
                         f"{cv['crossover_P'] or _beyond(cv)} |")
        lines.append("")
    return lines


def _measured(result: dict) -> list[str]:
    """Predicted against measured P = 1, 2, 4 steps (none without a check)."""
    lines: list[str] = []
    if result.get("measured_vs_predicted"):
        lines += ["| scaling | P | nodes | partitioner | measured step, min (median) [s] | predicted [s] | "
                  "pred / meas | predicted, ranks sharing the cores [s] | measured CPU s of the slowest rank | "
                  "predicted compute [s] | measured exchange [s] | predicted exchange [s] |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["measured_vs_predicted"]:
            note = " (oversubscribed)" if r["oversubscribed"] else ""
            lines.append(f"| {r['scaling']} | {r['P']}{note} | {r['nodes']} | {r['method']} | "
                         f"{r['measured_step_s']:.3f} ({r['measured_step_median_s']:.3f}) | "
                         f"{r['predicted_step_s']:.3f} | {r['ratio']:.2f} | "
                         f"{r['predicted_shared_cores_step_s']:.3f} | "
                         + ("-" if r["measured_cpu_s"] is None else f"{r['measured_cpu_s']:.3f}")
                         + f" | {r['predicted_compute_s']:.3f} | {r['measured_exchange_s']:.3f} | "
                         f"{r['predicted_exchange_s']:.3f} |")
        lines.append("")
    return lines



def plot_scaling_model(result: dict, path: str | Path, dim: int = 2, method: str = "rcb") -> Path:
    """Three panels against P (log axis): strong and weak scaling efficiency of the GPU model (solid; dashed with
    overlap) and of this CPU's gloo model (dotted) on the (dim, method) meshes, with the measured P = 1, 2, 4
    points (filled squares) and the model of those runs (open squares); and the GPU's exchange / compute per
    layer (communication dominates above 1). PNG written atomically."""
    import io  # noqa: PLC0415

    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from dsmpnn.bench.scale import _atomic_write  # noqa: PLC0415

    gpu, cpu = result["machines"][-1]["name"], "cpu-gloo-p2p"
    fig, axes = plt.subplots(1, 3, figsize=(16, 6.2))
    for ax, kind, key, what in ((axes[0], "strong", "nodes", "N"), (axes[1], "weak", "nodes_per_rank", "N/P")):
        sizes = sorted({cv[key] for cv in _pick(result["curves"], scaling=kind, dim=dim, method=method)})
        for i, size in enumerate(sizes):
            for cv in _pick(result["curves"], scaling=kind, dim=dim, method=method, **{key: size}):
                if cv["machine"] == gpu:
                    ax.plot(cv["P"], cv["efficiency"], "-", color=f"C{i}", marker=".", label=f"GPU, {what}={size:.0e}")
                    ax.plot(cv["P"], cv["efficiency_overlap"], "--", color=f"C{i}", alpha=0.6)
                elif cv["machine"] == cpu:
                    ax.plot(cv["P"], cv["efficiency"], ":", color=f"C{i}", label=f"CPU gloo, {what}={size:.0e}")
        ax.set(xlabel="ranks P", ylabel="parallel efficiency", ylim=(0, 1.1),
               title=f"{kind} scaling, {dim}-D {method} (dashed: GPU with overlap)")
    _plot_measured(axes, result)
    ax = axes[2]
    for i, cv in enumerate(_pick(result["curves"], scaling="strong", dim=dim, method=method, machine=gpu)):
        ax.plot(cv["P"][1:], cv["exchange_over_compute"][1:], "-", color=f"C{i}", marker=".",
                label=f"strong, N={cv['nodes']:.0e}")
    for i, cv in enumerate(_pick(result["curves"], scaling="weak", dim=dim, method=method, machine=gpu)):
        ax.plot(cv["P"][1:], cv["exchange_over_compute"][1:], "--", color=f"C{i + 5}", marker=".",
                label=f"weak, N/P={cv['nodes_per_rank']:.0e}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set(xlabel="ranks P", ylabel="exchange / compute, one layer fwd + bwd",
           title=f"GPU, {dim}-D {method}: exchange / compute (> 1: comm. dominates)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks([2**k for k in range(0, 11, 2)], [str(2**k) for k in range(0, 11, 2)])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.suptitle("DS-MPNN scaling model. GPU: assumed H200 ranks, NVLink in 8-GPU nodes, InfiniBand NDR between "
                 "(benchmarks/RESULTS.md); CPU: one core of this VM per rank, its gloo as measured.\nHalo volumes from "
                 "real partitions, extrapolated beyond the meshes partitioned. Measured wall times: a host shared with "
                 "other jobs (load 7-9 on 2 cores).", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return _atomic_write(Path(path), buf.getvalue())


def _plot_measured(axes, result: dict) -> None:
    """Measured (filled) and modelled (open) efficiencies of the bench_scaling runs, rcb rows."""
    rows = result.get("measured_vs_predicted") or []
    for ax, kind in ((axes[0], "strong"), (axes[1], "weak")):
        base = [r for r in rows if r["scaling"] == kind and r["P"] == 1]
        if not base:
            continue
        t1m, t1p = base[0]["measured_step_s"], base[0]["predicted_step_s"]
        pts = [r for r in rows if r["scaling"] == kind and (r["P"] == 1 or r["method"] == "rcb")]
        strong = kind == "strong"
        ps = [r["P"] for r in pts]
        ax.plot(ps, [efficiency(t1m, r["measured_step_s"], r["P"], strong) for r in pts], "ks",
                label=f"measured here, {'N' if strong else 'N/P'}={base[0]['nodes']:,} (P=4: 4 ranks on 2 cores)")
        ax.plot(ps, [efficiency(t1p, r["predicted_step_s"], r["P"], strong) for r in pts], "ks", mfc="none",
                label="model of those runs (one core per rank)")
        if base[0].get("measured_cpu_s"):
            c1 = base[0]["measured_cpu_s"]
            ax.plot(ps, [efficiency(c1, r["measured_cpu_s"], r["P"], strong) for r in pts], "r^",
                    label="measured here, CPU time of the slowest rank")
