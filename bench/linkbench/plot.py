"""The link bench's picture: measured and predicted latency per scheme at one rate (PNG)."""
from __future__ import annotations

from pathlib import Path

from bench.linkbench.config import AUTO


def plot_rate(rate: dict, model: str, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = rate["rows"]
    names = [f"auto\n({r['ran']})" if r["scheme"] == AUTO else r["scheme"] for r in rows]
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.2))
    ax.scatter(x, [r["measured_mean_s"] for r in rows], marker="o", s=60, color="tab:blue",
               label="measured (mean)", zorder=3)
    ax.scatter([i for i, r in zip(x, rows) if r["predicted_s"] is not None],
               [r["predicted_s"] for r in rows if r["predicted_s"] is not None], marker="x", s=70,
               color="tab:orange", label="predicted (live profile)", zorder=4)
    by = {r["scheme"]: r for r in rows}
    for s, color in (("device-only", "tab:green"), ("cloud-only", "tab:red")):
        ax.axhline(by[s]["measured_mean_s"], color=color, ls="--", lw=1, label=f"{s} measured")
    a = next(i for i, r in enumerate(rows) if r["scheme"] == AUTO)
    ax.scatter([a], [rows[a]["measured_mean_s"]], marker="*", s=320, facecolor="none", edgecolor="black",
               lw=1.5, label=f"live choice: {rows[a]['ran']}", zorder=5)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency per image, s (log)")
    bw = rate["bandwidth_mbps"]
    ax.set_title(f"{model}: tc {rate['rate_mbps']:g} Mbps, device estimate "
                 f"{'n/a' if bw is None else f'{bw:.3g}'} Mbps", fontsize=10)
    ax.grid(True, which="both", axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
