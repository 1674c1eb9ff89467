"""Markdown tables and learning-curve plots of ``benchmarks/paper_table.json`` (see ``paper_table.py``)."""

from __future__ import annotations

from pathlib import Path


def _label(r: dict) -> str:
    name = r["model"] + (f" P={r['nproc']}" if r["nproc"] > 1 else "")
    return name + (f" ({r['variant']})" if r.get("variant") else "")


ORDER = {"S-MPNN": 0, "DS-MPNN": 1, "GCN": 2}


def table(rows: list[dict], titles: dict[str, str]) -> str:
    lines = ["| dataset | model | tuning | train meshes x nodes | params | epochs | test rel. L2 | RMSE per field "
             "(physical) | pooled RMSE (normalised) | s / epoch | peak RSS / process (MiB) |",
             "|---|---|---|---|---:|---:|---:|---|---|---:|---:|"]
    names = list(titles)
    rows = sorted(rows, key=lambda r: (names.index(r["dataset"]) if r["dataset"] in names else 99,
                                       bool(r.get("variant")), ORDER[r["model"]], r["nproc"]))
    for r in rows:
        rmse = ", ".join(f"{k} {v:.3g}" for k, v in r["rmse"].items())
        pr = r["paper_rmse"]
        lines.append(f"| {titles.get(r['dataset'], r['dataset'])} | {_label(r)} | {r.get('tuning') or 'config'} | "
                     f"{r['train_meshes']} x "
                     f"{r['nodes_per_mesh']} | {r['params']:,} | {r['epochs']} | {r['rel_l2']:.4f} | {rmse} | "
                     f"{pr['pooled']:.3g} ({pr['normalised']:.3g}) | {r['seconds_per_epoch']:.2f} | "
                     f"{r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def sweep_table(rows: list[dict]) -> str:
    lines = ["| dataset | model | setting | params | epochs | final val rel. L2 | test rel. L2 |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        val = r["curves"]["val"][-1][1] if r["curves"]["val"] else float("nan")
        lines.append(f"| {r['dataset']} | {r['model']} | {r['variant']} | {r['params']:,} | {r['epochs']} | "
                     f"{val:.4f} | {r['rel_l2']:.4f} |")
    return "\n".join(lines)


def capacity_table(rows: list[dict]) -> str:
    lines = ["| P ranks | nodes per sampled graph | test rel. L2 | peak RSS per rank (MiB) | s / epoch |",
             "|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r["nproc"]):
        lines.append(f"| {r['nproc']} | {r['sample_nodes']} | {r['rel_l2']:.4f} | {r['peak_rss_mib_per_rank']:.0f} | "
                     f"{r['seconds_per_epoch']:.2f} |")
    return "\n".join(lines)


def plot_curves(rows: list[dict], title: str, path: Path) -> None:
    """Training loss and validation rel. L2 against epoch, one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        c = r["curves"]
        a.semilogy(c["epoch"], c["train_loss"], label=_label(r))
        if c["val"]:
            b.semilogy(*zip(*c["val"]), marker="o", ms=3, label=_label(r))
    a.set(xlabel="epoch", ylabel="training loss (MSE, normalised)", title=f"{title}: training")
    b.set(xlabel="epoch", ylabel="validation rel. L2 (full mesh)", title=f"{title}: validation")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(doc: dict, titles: dict[str, str], plots: Path) -> str:
    rows = doc.get("rows", [])
    md = [f"Machine: {doc.get('machine')}; date {doc.get('date')}.", "", table(rows, titles)]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        plot_curves([r for r in rows if r["dataset"] == name], titles.get(name, name),
                    plots / f"paper_curves_{name}.png")
    if doc.get("sweep"):
        md += ["", "Tuning sweep (same grid for both models; chosen by validation rel. L2):", "",
               sweep_table(doc["sweep"])]
    if doc.get("capacity"):
        md += ["", "Capacity (fixed sample per rank):", "", capacity_table(doc["capacity"])]
        plot_curves(doc["capacity"], "capacity", plots / "paper_curves_capacity.png")
    return "\n".join(md)
