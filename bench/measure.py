"""One run of one tool: a fresh swtpm behind a command counter, setup, then seal and unseal, timed and counted."""

from __future__ import annotations

import collections
import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.procs import ProcessCounter
from bench.tools import CountedTpm, Tool, make_secrets
from rig.counter import TpmCommandCounter
from rig.swtpm import Swtpm

OPS = ("seal", "unseal")


@dataclasses.dataclass
class Step:
    """One timed step of one run."""

    seconds: float
    tpm: collections.Counter  # commands by name
    processes: int | None  # measured: every process created (None: not measurable, see ProcessCounter)
    execs: int | None
    launches: int  # processes the benchmark itself started
    leftovers: int  # sessions and objects left in the TPM, flushed by the benchmark (see bench.tpmrm)


@dataclasses.dataclass
class Run:
    setup_tpm: int
    steps: dict[str, Step]


def run_once(tool_cls: type[Tool], n: int, procs: ProcessCounter) -> Run:
    """Seal then unseal n secrets with a new tool instance against a new swtpm; check the result."""
    work = Path(tempfile.mkdtemp(prefix=f"ironclaw-bench-{tool_cls.key}-"))
    try:
        with Swtpm() as tpm, TpmCommandCounter(tpm) as counter:
            tool = tool_cls(CountedTpm(counter.tcti, tpm.host, tpm.port), work, make_secrets(n))
            setup_tpm = counter.total
            steps = {op: _timed(getattr(tool, op), tool, counter, procs) for op in OPS}
            tool.check()
        return Run(setup_tpm, steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _timed(step, tool: Tool, counter: TpmCommandCounter, procs: ProcessCounter) -> Step:
    before, launches, leftovers, untimed = counter.snapshot(), tool.launches, tool.leftovers, tool.untimed_seconds
    procs.start()
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start - (tool.untimed_seconds - untimed)
    counted = procs.stop()
    # The counter counts a command before relaying it: every command of the step is in.
    tpm = counter.snapshot() - before
    processes, execs = counted if counted is not None else (None, None)
    return Step(seconds, tpm, processes, execs, tool.launches - launches, tool.leftovers - leftovers)


def summarize(tool_cls: type[Tool], n: int, runs: list[Run]) -> list[dict]:
    """One row per operation: the median time; the largest of each count (every run's are kept too)."""
    rows = []
    for op in OPS:
        steps = [run.steps[op] for run in runs]
        seconds = [s.seconds for s in steps]
        tpm_totals = [sum(s.tpm.values()) for s in steps]
        processes = [s.processes for s in steps if s.processes is not None]
        by_name = collections.Counter()
        for step in steps:
            by_name |= step.tpm  # the largest count of each command over the runs
        rows.append(
            {
                "tool": tool_cls.key,
                "n": n,
                "op": op,
                "runs": len(steps),
                "seconds_median": statistics.median(seconds),
                "seconds": [round(s, 6) for s in seconds],
                "tpm_commands": max(tpm_totals),
                "tpm_commands_runs": tpm_totals,
                "tpm_by_command": dict(sorted(by_name.items())),
                "processes": max(processes) if processes else None,
                "processes_runs": [s.processes for s in steps],
                "execs": max((s.execs for s in steps if s.execs is not None), default=None),
                "launches": max(s.launches for s in steps),
                "leftovers_flushed": max(s.leftovers for s in steps),
                "setup_tpm_commands": max(run.setup_tpm for run in runs),
            }
        )
    return rows
