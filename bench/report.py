"""The results as one JSON document and as text tables, with ratios of each peer to ironclaw; migration figures."""

from __future__ import annotations

BASES = {"ironclaw": "in process", "ironclaw-playbook": "playbook"}
PEERS = ("clevis", "systemd-creds")
METRICS = {"seconds_median": "time", "tpm_commands": "TPM", "processes": "procs"}
OP_TITLES = {"seal": "seal N secrets of one VM", "unseal": "unseal (verify) N secrets of one VM"}


def ratios(rows: list[dict]) -> list[dict]:
    """peer ÷ ironclaw for every peer, both ironclaw variants, operation, N and metric (None where undefined)."""
    index = {(r["tool"], r["n"], r["op"]): r for r in rows}
    out = []
    for (tool, n, op), row in index.items():
        if tool not in PEERS:
            continue
        for base in BASES:
            other = index.get((base, n, op))
            if other is None:
                continue
            for metric in METRICS:
                mine, theirs = row[metric], other[metric]
                value = round(mine / theirs, 3) if mine is not None and theirs else None
                out.append({"peer": tool, "base": base, "n": n, "op": op, "metric": metric, "ratio": value})
    return out


def _ratio_text(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f}×" if value >= 100 else f"{value:.3g}×"


def _count_text(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def table(doc: dict) -> str:
    machine = doc["machine"]
    lines = [
        f"ironclaw.sealed vs clevis and systemd-creds, {doc['date']}",
        f"{machine['nproc']} × {machine['cpu_model']}, load {machine['loadavg_at_start']} at start "
        "(shared, noisy machine: read ratios first)",
        f"fresh swtpm per run; {doc['secret_bytes']}-byte secrets; time = median wall seconds over 'runs' runs; "
        "TPM cmds and processes counted per run",
    ]
    if doc["results"] or doc["tools"]:
        lines += _seal_table(doc)
    if doc.get("migration"):
        lines += ["", *migration_table(doc["migration"])]
    return "\n".join(lines)


def _seal_table(doc: dict) -> list[str]:
    labels = {key: tool["label"] for key, tool in doc["tools"].items()}
    lines = []
    for op in ("seal", "unseal"):
        lines += [
            "",
            OP_TITLES[op],
            f"{'N':>6}  {'tool':<24}{'runs':>5}{'median s':>11}{'TPM cmds':>10}{'processes':>11}",
        ]
        for row in sorted((r for r in doc["results"] if r["op"] == op), key=lambda r: (r["n"], _order(doc, r))):
            lines.append(
                f"{row['n']:>6}  {labels[row['tool']]:<24}{row['runs']:>5}{row['seconds_median']:>11.3f}"
                f"{row['tpm_commands']:>10}{_count_text(row['processes']):>11}"
            )
    index = {(r["peer"], r["base"], r["n"], r["op"], r["metric"]): r["ratio"] for r in doc["ratios"]}
    peers = [p for p in PEERS if any(r["peer"] == p for r in doc["ratios"])]
    if peers:
        # ironclaw in process starts no process: no process ratio to it.
        columns = [(b, m) for b in BASES for m in METRICS if (b, m) != ("ironclaw", "processes")]
        head = "".join(
            f"{'÷ ironclaw ' + label:>{10 * sum(1 for b, _m in columns if b == base)}}" for base, label in BASES.items()
        )
        sub = "".join(f"{METRICS[metric]:>10}" for _base, metric in columns)
        lines += ["", "ratios: peer ÷ ironclaw (above 1: ironclaw costs less)", f"{'':<30}{head}"]
        lines.append(f"{'op':<8}{'N':>6}  {'peer':<14}{sub}")
        for op in ("seal", "unseal"):
            for n in doc["sizes"]:
                for peer in peers:
                    cells = "".join(f"{_ratio_text(index.get((peer, b, n, op, m))):>10}" for b, m in columns)
                    lines.append(f"{op:<8}{n:>6}  {peer:<14}{cells}")
    for key, tool in doc["tools"].items():
        if tool.get("not_measured"):
            lines += ["", f"{labels[key]}: not measurable here: {tool['not_measured']}"]
    for error in doc.get("errors", []):
        lines += ["", f"error: {error}"]
    return lines


def _order(doc: dict, row: dict) -> int:
    return list(doc["tools"]).index(row["tool"])


def compact_markdown(doc: dict) -> str:
    """The README's tables: sealing and unsealing (per operation and N, each tool's median time, TPM commands and
    processes), then migration."""
    parts = []
    if doc.get("seal_from"):
        parts.append(f"Seal and unseal: from the run of {doc['seal_from']['date']}; migration: {doc['date']}.")
    if doc["results"]:
        parts.append(_seal_markdown(doc))
    if doc.get("migration"):
        parts.append(migration_markdown(doc["migration"]))
    return "\n\n".join(parts)


def _seal_markdown(doc: dict) -> str:
    tools = [key for key, tool in doc["tools"].items() if not tool.get("not_measured")]
    index = {(r["tool"], r["n"], r["op"]): r for r in doc["results"]}
    header = "| op | N | " + " | ".join(doc["tools"][key]["label"] for key in tools) + " |"
    lines = [header, "|---|---:|" + "---:|" * len(tools)]
    for op in ("seal", "unseal"):
        for n in doc["sizes"]:
            cells = []
            for key in tools:
                row = index.get((key, n, op))
                if row is None:
                    cells.append("—")
                else:
                    procs = _count_text(row["processes"])
                    cells.append(f"{row['seconds_median']:.3g} s · {row['tpm_commands']} cmd · {procs} proc")
            lines.append(f"| {op} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- migration ---------------------------------------------------------------------------------------------------

MIGRATION_STEPS = ("export", "copy", "import", "revoke", "total")


def _tpm_split(row: dict) -> str:
    return "+".join(str(v) for v in row["tpm_by_node"].values())


def migration_table(mig: dict) -> list[str]:
    """Text: one VM (in process per step, the playbook as a whole), then fleets."""
    lines = [
        "migrate one VM with N secrets nodeA -> nodeB (TPM cmds: both TPMs, split source+target)",
        f"{'N':>6}  {'step':<22}{'runs':>5}{'median s':>11}{'TPM cmds':>10}{'split':>9}{'processes':>11}",
    ]
    rows = sorted(mig["results"], key=lambda r: (r["n"], r["tool"]))
    for row in rows:
        if row["tool"] == "ironclaw":
            for step in MIGRATION_STEPS:
                cell = row["steps"][step]
                lines.append(
                    f"{row['n']:>6}  {'in process: ' + step:<22}{row['runs']:>5}{cell['seconds_median']:>11.3f}"
                    f"{cell['tpm_commands']:>10}{_tpm_split(cell):>9}{_count_text(cell['processes']):>11}"
                )
            lines.append(f"{row['n']:>6}  {'bundle':<22}{row['bundle_bytes']:>15} bytes")
        else:
            lines.append(
                f"{row['n']:>6}  {'migrate playbook':<22}{row['runs']:>5}{row['seconds_median']:>11.3f}"
                f"{row['tpm_commands']:>10}{_tpm_split(row):>9}{_count_text(row['processes']):>11}"
            )
    trivial = mig.get("trivial_play")
    if trivial:
        base = trivial["trivial"]
        lines.append(
            f"{base['n']:>6}  {'trivial play':<22}{base['runs']:>5}{base['seconds_median']:>11.3f}"
            f"{base['tpm_commands']:>10}{_tpm_split(base):>9}{_count_text(base['processes']):>11}"
        )
        lines.append(
            f"migrate playbook N={trivial['migrate_n']} ÷ trivial play ({trivial['playbook']}, same hosts, same runs): "
            f"time {_ratio_text(trivial['ratio']['seconds'])}, processes {_ratio_text(trivial['ratio']['processes'])}"
        )
    if mig.get("fleet"):
        lines += [
            "",
            "fleet: M VMs (1 secret each) migrated nodeA -> nodeB; P: one run for the fleet (all), or one"
            " ansible-playbook run per VM, P runs at once",
            f"{'M':>4}{'P':>4}{'total s':>10}{'s/VM':>8}{'TPM cmds':>10}{'cmds/VM':>9}{'processes':>11}  failed runs",
        ]
        for row in mig["fleet"]:
            failed = f"{len(row['failed'])} of {1 if row['parallel'] == 0 else row['vms']}"
            if row["rerun"]:
                failed += (
                    f" (re-run one at a time: {row['rerun']['seconds']:.1f} s, {row['rerun']['tpm_commands']} cmds)"
                )
            if not row["converged"]:
                failed += "; NOT CONVERGED"
            lines.append(
                f"{row['vms']:>4}{row['parallel'] or 'all':>4}{row['seconds']:>10.1f}{row['seconds_per_vm']:>8.2f}"
                f"{row['tpm_commands']:>10}{row['tpm_commands_per_vm']:>9.1f}{_count_text(row['processes']):>11}"
                f"  {failed}"
            )
            for failure in row["failed"]:
                lines.append(f"{'':>9}VM {failure['vmid']}: task '{failure['task']}': {failure['error']}")
            for problem in row["check_problems"]:
                lines.append(f"{'':>9}not converged: {problem}")
    model = mig.get("fleet_model")
    if model:
        lines += ["", f"one at a time, fitted to M = {model['fitted_to']}: {model['formula']}"]
        for key, unit in (("seconds", "s"), ("tpm_commands", "TPM cmds")):
            fit = model[key]
            projected = ", ".join(f"M={m}: {v:g} {unit}" for m, v in fit["projected"].items())
            lines.append(
                f"  {unit}: a = {fit['a_per_migration']:g} per migration, b = {fit['b_per_reapproval']:g} per "
                f"re-approval (worst fit error {fit['worst_fit_error']:.1%}); projected, not measured: {projected}"
            )
    if mig.get("targets"):
        lines += ["", "targets (issue #13):"]
        lines += [f"  {line}" for line in target_lines(mig["targets"])]
    if mig.get("not_measured"):
        lines += ["", f"migration: not measured here: {mig['not_measured']}"]
    for error in mig.get("errors", []):
        lines += ["", f"migration error: {error}"]
    return lines


def target_lines(targets: list[dict]) -> list[str]:
    """One line per target: what, the limit, the measured value, met or not."""
    lines = []
    for target in targets:
        if target["measured"] is None:
            verdict = "not measured in this run"
        else:
            verdict = f"measured {target['measured']:.3g}, {'met' if target['met'] else 'NOT met'}"
        lines.append(f"{target['what']} ≤ {target['at_most']:g}: {verdict}")
    return lines


def fleet_label(parallel: int) -> str:
    """A fleet column: parallel 0 is one migrate run for the whole fleet (ironclaw_vms), else runs per VM."""
    if parallel == 0:
        return "one run for the fleet"
    return "one run per VM, one at a time" if parallel == 1 else f"one run per VM, {parallel} at once"


def _cell(seconds: float, tpm: int) -> str:
    return f"{seconds:.3g} s · {tpm} cmd"


def migration_markdown(mig: dict) -> str:
    """The README's migration tables: one VM by N, then fleets by size and runs at once."""
    index = {(r["tool"], r["n"]): r for r in mig["results"]}
    lines = [
        "| N | export | import | revoke | whole migration (in process) | migrate playbook | bundle |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sorted({r["n"] for r in mig["results"]}):
        cells = []
        mine = index.get(("ironclaw", n))
        for step in ("export", "import", "revoke", "total"):
            cells.append(
                _cell(mine["steps"][step]["seconds_median"], mine["steps"][step]["tpm_commands"]) if mine else "—"
            )
        book = index.get(("ironclaw-playbook", n))
        cells.append(
            f"{_cell(book['seconds_median'], book['tpm_commands'])} · {_count_text(book['processes'])} proc"
            if book
            else "—"
        )
        cells.append(f"{mine['bundle_bytes']:,} B".replace(",", " ") if mine else "—")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    trivial = mig.get("trivial_play")
    if trivial:
        base = trivial["trivial"]
        lines += [
            "",
            f"Trivial play on the same hosts (`{trivial['playbook']}`), timed in the same run as the migrate playbook"
            f" at N = {trivial['migrate_n']}: {_cell(base['seconds_median'], base['tpm_commands'])} · "
            f"{_count_text(base['processes'])} proc (median of {base['runs']}); migrate ÷ trivial play: time "
            f"{_ratio_text(trivial['ratio']['seconds'])}, processes {_ratio_text(trivial['ratio']['processes'])}.",
        ]
    if mig.get("fleet"):
        parallel = sorted({r["parallel"] for r in mig["fleet"]})
        fleet = {(r["vms"], r["parallel"]): r for r in mig["fleet"]}
        heads = [fleet_label(p) for p in parallel]
        lines += ["", "| VMs | " + " | ".join(heads) + " |", "|---:|" + "---:|" * len(parallel)]
        for size in sorted({r["vms"] for r in mig["fleet"]}):
            cells = []
            for p in parallel:
                row = fleet.get((size, p))
                if row is None:
                    cells.append("—")
                    continue
                cell = _cell(row["seconds"], row["tpm_commands"])
                if row["failed"]:
                    cell += " · the run failed" if p == 0 else f" · {len(row['failed'])} of {size} runs failed"
                    if row["rerun"]:
                        cell += f"; re-run: +{row['rerun']['seconds']:.3g} s, +{row['rerun']['tpm_commands']} cmd"
                    if row["converged"]:
                        cell += ", converged"
                if not row["converged"]:
                    cell += f" · not converged: {'; '.join(row['check_problems'])}"
                cells.append(cell)
            lines.append(f"| {size} | " + " | ".join(cells) + " |")
    if mig.get("targets"):
        lines += ["", "Targets (issue #13):", ""] + [f"- {line}" for line in target_lines(mig["targets"])]
    return "\n".join(lines)
