"""``python -m bench [--quick]``: seal and unseal N secrets of one VM with ironclaw, clevis and systemd-creds;
migrate a VM, and a fleet of VMs, between two nodes with ironclaw.

Every run gets fresh swtpms behind TPM command counters. Prints tables and
writes the same figures to bench/out (JSON, Markdown tables, PNG plots).
See bench/README.md; ``make bench`` installs what this needs first.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

from bench import checkout

checkout.setup()

from bench import machine, measure, migration, plot, report  # noqa: E402
from bench.procs import ProcessCounter  # noqa: E402
from bench.tools import SECRET_BYTES, Tool  # noqa: E402
from bench.tools.ironclaw import IronclawInProcess, IronclawPlaybook  # noqa: E402
from bench.tools.peers import Clevis, SystemdCreds  # noqa: E402

TOOLS: tuple[type[Tool], ...] = (IronclawInProcess, IronclawPlaybook, Clevis, SystemdCreds)
SIZES = (1, 10, 100, 1000)
QUICK_SIZES = (1, 10)
# Runs per N. A tool that starts one process per secret runs once from N=100
# on: a run is then N separate invocations (minutes at N=1000 for clevis),
# so its time is already an average over N processes.
RUNS = {1: 5, 10: 5, 100: 3, 1000: 3}
DEFAULT_RUNS = 3
PER_SECRET_PROCESS_ONE_RUN_FROM = 100
PARTS = ("seal", "migration")
# Migration through the playbook: up to this N (Ansible's fixed cost dominates; in process goes to 1000).
PLAYBOOK_MIGRATION_MAX_N = 100


def runs_for(tool: type[Tool], n: int, quick: bool) -> int:
    if quick or (tool.per_secret_process and n >= PER_SECRET_PROCESS_ONE_RUN_FROM):
        return 1
    return RUNS.get(n, DEFAULT_RUNS)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: N in {QUICK_SIZES}, one run each")
    parser.add_argument("--sizes", help="comma-separated N values instead of the default 1,10,100,1000")
    parser.add_argument("--tools", help=f"comma-separated subset of: {', '.join(t.key for t in TOOLS)}")
    parser.add_argument("--out", type=Path, default=checkout.OUT, help="output directory (default: bench/out)")
    parser.add_argument("--parts", help=f"comma-separated subset of: {', '.join(PARTS)} (default: both)")
    parser.add_argument(
        "--migration-sizes",
        help="comma-separated N values to migrate instead of 1,10,100,1000 (the playbook only up to "
        f"N={PLAYBOOK_MIGRATION_MAX_N})",
    )
    parser.add_argument("--fleet", help="comma-separated fleet sizes instead of 1,5,10 (VMs, one secret each)")
    parser.add_argument(
        "--fleet-parallel", help="comma-separated concurrent migrate runs for the largest fleet instead of 1,2,4"
    )
    parser.add_argument(
        "--fleet-one-run",
        help="comma-separated fleet sizes moved by one migrate run (ironclaw_vms) instead of 1,10,50",
    )
    return parser.parse_args(argv)


def _sizes(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(",")) if text else default


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sizes = tuple(int(n) for n in args.sizes.split(",")) if args.sizes else QUICK_SIZES if args.quick else SIZES
    parts = args.parts.split(",") if args.parts else PARTS
    chosen = [t for t in TOOLS if "seal" in parts and (not args.tools or t.key in args.tools.split(","))]
    started = datetime.datetime.now(datetime.UTC)
    doc = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "parts": list(parts),
        "sizes": list(sizes) if "seal" in parts else [],
        "secret_bytes": SECRET_BYTES,
        "machine": machine.describe(),
        "tools": {},
        "results": [],
        "errors": [],
    }
    with ProcessCounter() as procs:
        if procs.error:
            log(procs.error)
        doc["process_counting"] = procs.error or "proc connector: every process created in the step, threads excluded"
        available = []
        for tool in chosen:
            reason = tool.missing()
            if reason is None:
                # A first run at N=1 proves the tool works here (and warms caches); it is not recorded.
                try:
                    measure.run_once(tool, 1, procs)
                except Exception as exc:  # any failure is reported with its own message
                    reason = str(exc)
            doc["tools"][tool.key] = {"label": tool.label, "not_measured": reason}
            if reason:
                log(f"{tool.label}: not measurable here: {reason}")
            else:
                available.append(tool)
        for n in sizes:
            runs: dict[type[Tool], list[measure.Run]] = {tool: [] for tool in available}
            # Round robin over the tools, so that a noisy minute hits them all alike.
            for index in range(max((runs_for(t, n, args.quick) for t in available), default=0)):
                for tool in available:
                    total = runs_for(tool, n, args.quick)
                    if index >= total or tool in failed(doc, n):
                        continue
                    try:
                        run = measure.run_once(tool, n, procs)
                    except Exception as exc:  # any failure is reported with its own message
                        doc["errors"].append({"tool": tool.key, "n": n, "error": str(exc)})
                        log(f"N={n} {tool.label}: failed: {exc}")
                        continue
                    runs[tool].append(run)
                    steps = ", ".join(
                        f"{op} {s.seconds:.2f}s {sum(s.tpm.values())} cmds" for op, s in run.steps.items()
                    )
                    log(f"N={n} run {index + 1}/{total} {tool.label}: {steps}")
            for tool, done in runs.items():
                if done:
                    doc["results"] += measure.summarize(tool, n, done)
        if "migration" in parts:
            log("migration: one VM between two nodes, then fleets")
            quick = args.quick
            migration_sizes = _sizes(args.migration_sizes, migration.QUICK_SIZES if quick else migration.SIZES)
            default_playbook = migration.QUICK_PLAYBOOK_SIZES if quick else migration.PLAYBOOK_SIZES
            doc["migration"] = migration.measure(
                procs,
                sizes=migration_sizes,
                playbook_sizes=tuple(n for n in migration_sizes if n <= PLAYBOOK_MIGRATION_MAX_N)
                if args.migration_sizes
                else default_playbook,
                fleet_sizes=_sizes(args.fleet, migration.QUICK_FLEET_SIZES if quick else migration.FLEET_SIZES),
                fleet_parallel=_sizes(
                    args.fleet_parallel, migration.QUICK_FLEET_PARALLEL if quick else migration.FLEET_PARALLEL
                ),
                quick=quick,
                log=log,
                batch_sizes=_sizes(
                    args.fleet_one_run, migration.QUICK_BATCH_FLEET_SIZES if quick else migration.BATCH_FLEET_SIZES
                ),
            )
    doc["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["seconds_total"] = round((datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1)
    doc["ratios"] = report.ratios(doc["results"])
    print(report.table(doc))
    write(carry_over(doc, args.out / "latest.json"), args.out, started)
    return 1 if doc["errors"] or doc.get("migration", {}).get("errors") else 0


def failed(doc: dict, n: int) -> set:
    return {e["tool"] for e in doc["errors"] if e["n"] == n}


SEAL_KEYS = ("tools", "sizes", "results", "ratios")


def carry_over(doc: dict, previous: Path) -> dict:
    """A full run without the seal part keeps the seal figures of the latest full run in latest.*, marked with
    that run's date (``seal_from``), so that a migration-only run does not drop the tables the README quotes."""
    if doc["quick"] or "seal" in doc["parts"] or not previous.exists():
        return doc
    old = json.loads(previous.read_text())
    if not old.get("results"):
        return doc
    kept = {key: old.get(key) for key in SEAL_KEYS}
    seal_from = old.get("seal_from") or {"date": old["date"], "machine": old["machine"]}
    return {**doc, **kept, "seal_from": seal_from}


def write(doc: dict, out: Path, started: datetime.datetime) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # A smoke run never replaces the figures the README quotes.
    latest = "quick" if doc["quick"] else "latest"
    stamp = started.strftime("%Y-%m-%d-%H%M") + ("-quick" if doc["quick"] else "")
    text = json.dumps(doc, indent=2) + "\n"
    for path in (out / f"results-{stamp}.json", out / f"{latest}.json"):
        path.write_text(text)
        log(f"wrote {path}")
    (out / f"{latest}.md").write_text(report.compact_markdown(doc) + "\n")
    plots = []
    if doc["results"] and not doc.get("seal_from"):  # a carried-over seal part keeps its plot
        plots.append((plot.render, out / f"{latest}.png"))
    if doc.get("migration"):
        plots.append((plot.render_migration, out / f"{latest}-migration.png"))
    for render, path in plots:
        try:
            render(doc, path)
            log(f"wrote {path}")
        except ImportError as exc:
            log(f"no plot: {exc} (make bench installs requirements/bench.txt)")
            break


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
