"""Time and TPM commands against N, per tool, on log scales (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

# The two ironclaw lines coincide in TPM commands when unsealing: hollow, larger squares under filled circles.
STYLE = {
    "ironclaw": {"color": "#1b7837", "marker": "o", "zorder": 3},
    "ironclaw-playbook": {
        "color": "#5aae61",
        "marker": "s",
        "markersize": 10,
        "markerfacecolor": "none",
        "linestyle": "--",
        "zorder": 2,
    },
    "clevis": {"color": "#b2182b", "marker": "^"},
    "systemd-creds": {"color": "#2166ac", "marker": "D"},
}
PANELS = (("seconds_median", "wall time, median (s)"), ("tpm_commands", "TPM commands"))


def render(doc: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only `make bench` installs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: PLC0415

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5), constrained_layout=True)
    for row, op in enumerate(("seal", "unseal")):
        for col, (metric, ylabel) in enumerate(PANELS):
            ax = axes[row][col]
            for key, tool in doc["tools"].items():
                points = sorted(
                    (r["n"], r[metric]) for r in doc["results"] if r["tool"] == key and r["op"] == op and r[metric]
                )
                if points:
                    xs, ys = zip(*points, strict=True)
                    style = {"linewidth": 1.8, "markersize": 6, **STYLE.get(key, {})}
                    ax.plot(xs, ys, label=tool["label"], **style)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(doc["sizes"], [str(n) for n in doc["sizes"]])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("N secrets of one VM")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{op}: {ylabel}")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=10)
    machine = doc["machine"]
    fig.suptitle(
        f"ironclaw.sealed vs clevis and systemd-creds on one swtpm, {doc['date']}\n"
        f"{machine['nproc']} × {machine['cpu_model']} (shared, noisy machine: read ratios first)",
        fontsize=11,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
