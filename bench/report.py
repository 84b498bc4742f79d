"""The results as one JSON document and as a text table, with ratios of each peer to ironclaw."""

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
    labels = {key: tool["label"] for key, tool in doc["tools"].items()}
    machine = doc["machine"]
    lines = [
        f"ironclaw.sealed vs clevis and systemd-creds, {doc['date']}",
        f"{machine['nproc']} × {machine['cpu_model']}, load {machine['loadavg_at_start']} at start "
        "(shared, noisy machine: read ratios first)",
        f"fresh swtpm per run; {doc['secret_bytes']}-byte secrets; time = median wall seconds over 'runs' runs; "
        "TPM cmds and processes counted per run",
    ]
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
    return "\n".join(lines)


def _order(doc: dict, row: dict) -> int:
    return list(doc["tools"]).index(row["tool"])


def compact_markdown(doc: dict) -> str:
    """The README's table: per operation and N, each tool's median time and TPM commands."""
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
