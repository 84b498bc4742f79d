"""Time and TPM commands against N, per tool, on log scales; migration against N and fleet size (PNG, Agg)."""

from __future__ import annotations

from pathlib import Path

from bench.report import fleet_label

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
    _save(plt, fig, doc, "ironclaw.sealed vs clevis and systemd-creds on one swtpm", path)


def _save(plt, fig, doc: dict, title: str, path: Path) -> None:
    """Title the figure with the date and the machine (ratios first: a shared machine), write it, free it."""
    machine = doc["machine"]
    fig.suptitle(
        f"{title}, {doc['date']}\n"
        f"{machine['nproc']} × {machine['cpu_model']} (shared, noisy machine: read ratios first)",
        fontsize=11,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


# Migration: the in-process steps in shades of the in-process green, the playbook as for sealing.
MIGRATION_STYLE = {
    "export": {"color": "#a6dba0", "marker": "v", "linestyle": ":"},
    "import": {"color": "#5aae61", "marker": "^", "linestyle": ":"},
    "revoke": {"color": "#762a83", "marker": "x", "linestyle": ":"},
    "total": STYLE["ironclaw"],
    "playbook": {**STYLE["ironclaw-playbook"], "markersize": 8},
}
FLEET_STYLE = {
    0: {"color": "#2166ac", "marker": "^"},
    1: {"color": "#1b7837", "marker": "o"},
    2: {"color": "#e08214", "marker": "s"},
}
FLEET_DEFAULT = {"color": "#b2182b", "marker": "D"}


def render_migration(doc: dict, path: Path) -> None:
    """One VM against N (time, TPM commands), then the fleet against its size, one line per runs-at-once."""
    import matplotlib  # noqa: PLC0415 - only `make bench` installs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: PLC0415

    mig = doc["migration"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5), constrained_layout=True)
    mine = sorted((r for r in mig["results"] if r["tool"] == "ironclaw"), key=lambda r: r["n"])
    book = sorted((r for r in mig["results"] if r["tool"] == "ironclaw-playbook"), key=lambda r: r["n"])
    sizes = sorted({r["n"] for r in mig["results"]})
    for col, (metric, ylabel) in enumerate(PANELS):
        ax = axes[0][col]
        for step in ("export", "import", "revoke", "total"):
            points = [(r["n"], r["steps"][step][metric]) for r in mine if r["steps"][step][metric]]
            if points:
                label = "in process: whole migration" if step == "total" else f"in process: {step}"
                ax.plot(*zip(*points, strict=True), label=label, **{"linewidth": 1.6, **MIGRATION_STYLE[step]})
        points = [(r["n"], r[metric]) for r in book if r[metric]]
        if points:
            ax.plot(
                *zip(*points, strict=True),
                label="migrate playbook",
                **{"linewidth": 1.8, **MIGRATION_STYLE["playbook"]},
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        if sizes:
            ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("N secrets of the VM")
        ax.set_ylabel(ylabel)
        ax.set_title(f"migrate one VM: {ylabel}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fleet = mig.get("fleet", [])
    vms = sorted({r["vms"] for r in fleet})
    for col, (metric, ylabel) in enumerate((("seconds", "wall time, total (s)"), ("tpm_commands", "TPM commands"))):
        ax = axes[1][col]
        for parallel in sorted({r["parallel"] for r in fleet}):
            rows = sorted((r for r in fleet if r["parallel"] == parallel), key=lambda r: r["vms"])
            label = fleet_label(parallel)
            style = {"linewidth": 1.8, "markersize": 7, **FLEET_STYLE.get(parallel, FLEET_DEFAULT)}
            ax.plot([r["vms"] for r in rows], [r[metric] for r in rows], label=label, **style)
            for row in rows:
                if row["failed"] or not row["converged"]:
                    note = "the run failed" if parallel == 0 else f"{len(row['failed'])} of {row['vms']} runs failed"
                    if not row["converged"]:
                        note += f",\n{len(row['check_problems'])} problem(s) left after re-run"
                    ax.annotate(
                        note,
                        (row["vms"], row[metric]),
                        textcoords="offset points",
                        xytext=(-10, 0),
                        ha="right",
                        va="center",
                        fontsize=8,
                        color=style["color"],
                    )
        fit = (mig.get("fleet_model") or {}).get(metric)
        fit_sizes = (mig.get("fleet_model") or {}).get("fitted_to") or [0]
        if fit and vms:
            xs = [m / 10 for m in range(10, 10 * max(vms) + 1)]
            a, b = fit["a_per_migration"], fit["b_per_reapproval"]
            ax.plot(
                xs,
                [a * m + b * m * (m - 1) / 2 for m in xs],
                color=FLEET_STYLE[1]["color"],
                linewidth=0.8,
                linestyle="--",
                label=f"one run per VM, fitted:\n{a:.3g}·M + {b:.3g}·M(M−1)/2, projected past M = {max(fit_sizes)}",
            )
        if vms:
            ax.set_xticks(vms, [str(m) for m in vms])
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("VMs migrated nodeA → nodeB (1 secret each)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"fleet: {ylabel}")
        ax.grid(True, alpha=0.3)
        if fleet:
            ax.legend(fontsize=8, loc="upper left")
    _save(plt, fig, doc, "ironclaw.sealed migration between two swtpm nodes", path)
