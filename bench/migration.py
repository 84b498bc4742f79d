"""Migration cost: move one VM with N secrets between two nodes, and a fleet of VMs from one node to another.

Three measurements, each against two swtpms behind TPM command counters (one
per node); TPM commands are the sum over both counters.

- **In process** (as the ``ironclaw_node``, ``ironclaw_policy``,
  ``ironclaw_seal`` and ``ironclaw_destroy`` modules use module_utils, without
  Ansible): export the VM's keyslot under a signed grant, copy the bundle file,
  import it under an approval for the target (with its test-unseal), revoke the
  source copy (remove its files and the bundles, bump the source's epoch). Two
  fresh swtpms for every run; each step timed and counted apart.
- **Playbook, one VM**: ``ansible-playbook ironclaw.sealed.migrate`` from
  nodeA to nodeB, two localhost nodes (``ironclaw_pve: false``) as in
  tests/integration/test_migrate.py.
- **Playbook, fleet**: M VMs (one secret each) provisioned on nodeA and
  migrated to nodeB by one ``ansible-playbook`` run for the whole fleet
  (``ironclaw_vms``: one epoch bump on the source), or by one run per VM, one
  at a time or with up to P runs at once.

One-time work is not timed: node enrollment, provisioning the VMs. The
playbook lab is set up once per kind of starting point and saved (both nodes'
state directories, the controller directory and both swtpms' state); every
run starts from a restored copy, with both swtpms restarted on it.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playbook_rig import ANSIBLE_PLAYBOOK, DEBIAN_PYTHON, Lab, Node, vm_uuid_of

from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.node import destroy_on_node
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import (
    PolicyKeyStore,
    sign_grant,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine, transfer
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir
from bench import tpmrm
from bench.procs import ProcessCounter
from bench.tools import BenchError, make_secrets
from rig.counter import TpmCommandCounter
from rig.policy import approve
from rig.swtpm import Swtpm

SIZES = (1, 10, 100, 1000)
PLAYBOOK_SIZES = (1, 10, 100)
FLEET_SIZES = (1, 5, 10)
FLEET_PARALLEL = (1, 2, 4)
# Fleets moved by one migrate run (ironclaw_vms); recorded with parallel = ONE_RUN.
BATCH_FLEET_SIZES = (1, 10, 50)
ONE_RUN = 0
# Fleet sizes projected (never measured by default) from the measured ones: see fleet_model().
PROJECT_FLEET = (50,)
QUICK_SIZES = (1, 10)
QUICK_PLAYBOOK_SIZES = (1,)
QUICK_FLEET_SIZES = (1, 2)
QUICK_FLEET_PARALLEL = (1, 2)
QUICK_BATCH_FLEET_SIZES = (1, 2)
# Runs per N, as for sealing (bench.__main__.RUNS); the playbook carries seconds of fixed cost, so fewer.
RUNS = {1: 5, 10: 5, 100: 3, 1000: 3}
PLAYBOOK_RUNS = 3
IN_PROCESS_STEPS = ("export", "copy", "import", "revoke")
NODES = ("nodeA", "nodeB")
VMID = 100
UUID = "6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f"
FLEET_FIRST_VMID = 200
# A manifest as the playbook passes it (the floor: version and digest of the newest signed manifest).
MANIFEST = {"version": 1, "digest": "ab" * 32}
MIGRATION_WINDOW = timedelta(hours=1)
PLAYBOOK_TIMEOUT = 900
# The baseline of the one-VM migrate playbook: one play on localhost, one ping delegated to each node, one on
# localhost (the hosts and connections migrate's steps use). Timed in the same runs as migrate, at TRIVIAL_N.
TRIVIAL_PLAY = Path(__file__).resolve().parent / "playbooks" / "trivial.yml"
TRIVIAL_N = 1
# Issue #13's targets for `make bench`: (key, what, at most).
TARGET_FLEET_VMS = 50
TARGETS = (
    ("migrate_over_trivial_play", "migrate of one VM ÷ the trivial play, median time", 3),
    ("fleet_one_run_seconds", f"{TARGET_FLEET_VMS} VMs migrated by one run, seconds", 60),
)


@dataclasses.dataclass
class Counted:
    """What one measured window cost."""

    seconds: float
    tpm: collections.Counter  # commands by name, both nodes
    tpm_by_node: dict[str, int]
    processes: int | None
    leftovers: int = 0


class Meter:
    """Times a window and counts what it sent to each node's TPM and the processes it started."""

    def __init__(self, counters: dict[str, TpmCommandCounter], tpms: dict[str, Swtpm], procs: ProcessCounter):
        self.counters, self.tpms, self.procs = counters, tpms, procs

    @contextlib.contextmanager
    def window(self, into: dict, name: str):
        before = {node: counter.snapshot() for node, counter in self.counters.items()}
        self.procs.start()
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.procs.stop()
            raise
        seconds = time.perf_counter() - start
        counted = self.procs.stop()
        # The counter counts a command before relaying it: every command of the window is in.
        by_node = {node: counter.snapshot() - before[node] for node, counter in self.counters.items()}
        total = collections.Counter()
        for counts in by_node.values():
            total += counts
        # Untimed, uncounted: what a client left in a TPM, flushed as /dev/tpmrm0 would (bench.tpmrm).
        leftovers = sum(tpmrm.flush_leftovers(tpm.host, tpm.port) for tpm in self.tpms.values())
        into[name] = Counted(
            seconds,
            total,
            {node: sum(counts.values()) for node, counts in by_node.items()},
            counted[0] if counted is not None else None,
            leftovers,
        )


def _now() -> datetime:
    return datetime.now(UTC)


# -- in process ----------------------------------------------------------------------------------------------


def in_process_run(n: int, procs: ProcessCounter) -> dict:
    """Export, copy, import and revoke one VM with n secrets between two fresh counted swtpms; checked."""
    work = Path(tempfile.mkdtemp(prefix="ironclaw-bench-migrate-"))
    try:
        with (
            Swtpm() as tpm_a,
            Swtpm() as tpm_b,
            TpmCommandCounter(tpm_a) as counter_a,
            TpmCommandCounter(tpm_b) as counter_b,
        ):
            return _in_process(
                n, work, {"nodeA": tpm_a, "nodeB": tpm_b}, {"nodeA": counter_a, "nodeB": counter_b}, procs
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _in_process(n, work: Path, tpms, counters, procs) -> dict:
    source, target = str(work / "nodeA"), str(work / "nodeB")
    keys = PolicyKeyStore(str(work / "controller"))

    def backend(state_dir: str):
        node = "nodeA" if state_dir == source else "nodeB"
        return open_backend("tpm2", tcti=counters[node].tcti, state_dir=state_dir)

    # Setup, not timed: enroll both nodes, seal the VM's n secrets on the source.
    for state_dir in (source, target):
        with backend(state_dir) as node:
            node.provision()
    secrets = make_secrets(n)
    keys.create(VMID, UUID)
    with backend(source) as node:
        facts = node.facts()
        engine.seal(
            node,
            VmDir(source, VMID, UUID),
            [engine.Secret(s.name, s.data) for s in secrets],
            migratable=True,
            pcrs=None,
            policy_key_public=keys.public(VMID, UUID)[0],
            approval=approve(keys, VMID, UUID, facts),
            check_mode=False,
        )
    setup_tpm = sum(counter.total for counter in counters.values())
    meter, steps = Meter(counters, tpms, procs), {}
    outgoing = transfer.bundle_path(source, VMID, UUID)
    incoming = transfer.bundle_path(target, VMID, UUID)

    with meter.window(steps, "export"):
        # The grant names the target's SRK: its facts first (the playbook reads them on the target).
        with backend(target) as node:
            target_facts = node.facts()
        with backend(source) as node:
            facts = node.facts()
            grant = sign_grant(
                keys.load(VMID, UUID),
                vmid=VMID,
                vm_uuid=UUID,
                source_name=facts.node_name,
                source_epoch_nv_name=facts.epoch_nv_name,
                epoch=facts.epoch,
                target_name=target_facts.node_name,
                target_public=target_facts.node_public,
            )
            exported = transfer.export_vm(
                node,
                VmDir(source, VMID, UUID),
                grant,
                migration={
                    "source": "nodeA",
                    "target": "nodeB",
                    "not_after": canonical.utc_timestamp(_now() + MIGRATION_WINDOW),
                },
                manifest=MANIFEST,
                path=outgoing,
                now=_now(),
                check_mode=False,
            )
    with meter.window(steps, "copy"):
        os.makedirs(os.path.dirname(incoming), mode=0o700, exist_ok=True)
        shutil.copyfile(outgoing, incoming)
    bundle_bytes = os.path.getsize(incoming)
    with meter.window(steps, "import"):
        with backend(target) as node:
            imported = transfer.import_vm(
                node,
                VmDir(target, VMID, UUID),
                approve(keys, VMID, UUID, node.facts()),
                path=incoming,
                now=_now(),
                check_mode=False,
            )
    with meter.window(steps, "revoke"):
        with backend(source) as node:
            revoked = destroy_on_node(node, source, VMID, UUID, now=canonical.utc_timestamp(_now()), check_mode=False)
        transfer.remove_bundle(outgoing, check_mode=False)
        transfer.remove_bundle(incoming, check_mode=False)

    # Not timed: the target opens exactly the secrets that were sealed; the source holds nothing and moved on.
    statuses = (exported["status"], imported["status"], revoked["status"])
    if statuses != ("exported", "imported", "destroyed"):
        raise BenchError(f"in-process migration of {n} secrets: unexpected statuses {statuses}")
    epochs = revoked["evidence"]["epoch_before"], revoked["evidence"]["epoch_after"]
    if epochs[1] != epochs[0] + 1 or VmDir(source, VMID, UUID).exists():
        raise BenchError(f"in-process migration: the source was not revoked (epochs {epochs})")
    with open_backend("tpm2", tcti=tpms["nodeB"].tcti, state_dir=target) as node:
        opened = {name: data for name, _header, data, _error in engine.open_all(node, VmDir(target, VMID, UUID))}
    if opened != {s.name: s.data for s in secrets}:
        raise BenchError(f"in-process migration: the target does not open the {n} secrets that were sealed")
    return {"setup_tpm": setup_tpm, "steps": steps, "bundle_bytes": bundle_bytes}


def summarize_in_process(n: int, runs: list[dict]) -> dict:
    """Per step and for the whole migration: median time, TPM commands (the largest; every run's kept)."""
    steps = {}
    for step in (*IN_PROCESS_STEPS, "total"):
        if step == "total":
            seconds = [sum(run["steps"][s].seconds for s in IN_PROCESS_STEPS) for run in runs]
            counted = [sum((run["steps"][s].tpm for s in IN_PROCESS_STEPS), collections.Counter()) for run in runs]
            processes = [_sum_or_none(run["steps"][s].processes for s in IN_PROCESS_STEPS) for run in runs]
            by_node = [
                {node: sum(run["steps"][s].tpm_by_node[node] for s in IN_PROCESS_STEPS) for node in NODES}
                for run in runs
            ]
            leftovers = [sum(run["steps"][s].leftovers for s in IN_PROCESS_STEPS) for run in runs]
        else:
            seconds = [run["steps"][step].seconds for run in runs]
            counted = [run["steps"][step].tpm for run in runs]
            processes = [run["steps"][step].processes for run in runs]
            by_node = [run["steps"][step].tpm_by_node for run in runs]
            leftovers = [run["steps"][step].leftovers for run in runs]
        steps[step] = _row(seconds, counted, processes, by_node, leftovers)
    return {
        "tool": "ironclaw",
        "n": n,
        "runs": len(runs),
        "bundle_bytes": max(run["bundle_bytes"] for run in runs),
        "setup_tpm_commands": max(run["setup_tpm"] for run in runs),
        "steps": steps,
    }


def _sum_or_none(values) -> int | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


def _row(seconds, counted, processes, by_node, leftovers) -> dict:
    largest = collections.Counter()
    for counts in counted:
        largest |= counts
    totals = [sum(c.values()) for c in counted]
    measured = [p for p in processes if p is not None]
    return {
        "seconds_median": statistics.median(seconds),
        "seconds": [round(s, 6) for s in seconds],
        "tpm_commands": max(totals),
        "tpm_commands_runs": totals,
        "tpm_by_node": {node: max(b[node] for b in by_node) for node in NODES},
        "tpm_by_command": dict(sorted(largest.items())),
        "processes": max(measured) if measured else None,
        "processes_runs": list(processes),
        "leftovers_flushed": max(leftovers),
    }


# -- the playbook lab ------------------------------------------------------------------------------------------


class TwoNodeLab:
    """nodeA and nodeB on localhost, each with its own swtpm behind a counter; saved and restored as a whole.

    The lab's directory is always the same path, so the inventory, the controller directory and the node state
    directories stay valid across restores; the swtpms keep their ports when they restart on restored state.
    """

    def __init__(self, root: Path, procs: ProcessCounter) -> None:
        self.root = root
        self.procs = procs
        self.saved = root / "saved"
        self.saved.mkdir(parents=True)
        self.tpms: dict[str, Swtpm] = {}
        self.counters: dict[str, TpmCommandCounter] = {}
        self._stack = contextlib.ExitStack()
        try:
            for node in NODES:
                self.tpms[node] = self._stack.enter_context(Swtpm())
                self.counters[node] = self._stack.enter_context(TpmCommandCounter(self.tpms[node]))
            (root / "lab").mkdir()
            self.lab = Lab(
                root / "lab",
                [
                    Node(node, "tpm2", root / "lab" / node, DEBIAN_PYTHON, tcti=self.counters[node].tcti)
                    for node in NODES
                ],
            )
            self.meter = Meter(self.counters, self.tpms, procs)
            self.setup_tpm = 0
            self.run("init", "-e", f"ironclaw_controller_dir={self.lab.controller_dir}")
            self.run("enroll")
            self.setup_tpm = self.tpm_total()
        except BaseException:
            self._stack.close()
            raise

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> TwoNodeLab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def missing(cls) -> str | None:
        if not ANSIBLE_PLAYBOOK.exists():
            return f"{ANSIBLE_PLAYBOOK} not found: run the benchmark with the venv's python (make bench)"
        if not Path(DEBIAN_PYTHON).exists():
            return f"{DEBIAN_PYTHON} not found"
        return None

    def tpm_total(self) -> int:
        return sum(counter.total for counter in self.counters.values())

    # -- saved states --------------------------------------------------------------------------------------
    def save(self, name: str) -> None:
        """Keep the lab as it is now (swtpms stopped meanwhile, so their state is on disk)."""
        dest = self.saved / name
        for tpm in self.tpms.values():
            tpm.stop()
        try:
            shutil.copytree(self.lab.root, dest / "lab", symlinks=True, ignore=shutil.ignore_patterns("ansible-tmp"))
            for node, tpm in self.tpms.items():
                shutil.copytree(tpm.state_dir, dest / "tpm" / node)
        finally:
            for tpm in self.tpms.values():
                tpm.start()

    def restore(self, name: str) -> None:
        """Put the lab back as it was saved; both swtpms restart on the saved state (a reboot, as far as the TPM
        knows)."""
        source = self.saved / name
        for tpm in self.tpms.values():
            tpm.stop()
        try:
            shutil.rmtree(self.lab.root)
            shutil.copytree(source / "lab", self.lab.root, symlinks=True)
            for node, tpm in self.tpms.items():
                shutil.rmtree(tpm.state_dir)
                shutil.copytree(source / "tpm" / node, tpm.state_dir)
        finally:
            for tpm in self.tpms.values():
                tpm.start()

    # -- ansible-playbook ----------------------------------------------------------------------------------
    def start(self, playbook: str, *args: str, log: Path) -> tuple[subprocess.Popen, object]:
        argv, env = self.lab.command(playbook, *args)
        out = open(log, "w")  # closed by finish()
        # ansible-playbook from the venv with our own inventory; an argument list, never a shell.
        proc = subprocess.Popen(  # noqa: S603
            argv, cwd=self.lab.root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
        return proc, out

    def run(self, playbook: str, *args: str) -> str:
        """One ansible-playbook run, its output; BenchError when it fails."""
        log = self.root / f"{playbook}.log"
        done = self.finish(*self.start(playbook, *args, log=log), log=log)
        if done.returncode != 0:
            raise BenchError(f"ansible-playbook {playbook} exited {done.returncode}:\n{done.output[-4000:]}")
        return done.output

    @staticmethod
    def finish(proc: subprocess.Popen, out, *, log: Path) -> Finished:
        try:
            proc.wait(timeout=PLAYBOOK_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            out.close()
        return Finished(proc.returncode, log.read_text(errors="replace"))

    def run_trivial(self) -> str:
        """The trivial play on the lab's hosts, its output; BenchError when it fails."""
        log = self.root / "trivial.log"
        done = self.finish(*self.start(str(TRIVIAL_PLAY), log=log), log=log)
        if done.returncode != 0:
            raise BenchError(f"the trivial play exited {done.returncode}:\n{done.output[-4000:]}")
        return done.output

    def provision(self, node: str, vmid: int, secrets_file: Path) -> None:
        self.run("provision", *self.lab.vm_args(node, vmid, secrets_file=secrets_file))

    def migrate_args(self, vmid: int) -> list[str]:
        return [
            *("-e", f"ironclaw_vmid={vmid}", "-e", f"ironclaw_vm_uuid={vm_uuid_of('nodeA', vmid)}"),
            *("-e", "ironclaw_source=nodeA", "-e", "ironclaw_target=nodeB"),
        ]

    # -- checks (not timed, not counted: straight to the swtpms) --------------------------------------------
    def check_moved(self, vmid: int, secrets: dict[str, bytes]) -> list[str]:
        """What is wrong after migrating this VM: the target must open exactly these secrets, the source hold
        nothing of the VM, and the store's newest manifest place it on the target."""
        source = self.lab.nodes["nodeA"].state_dir
        target = self.lab.nodes["nodeB"].state_dir
        uuid = vm_uuid_of("nodeA", vmid)
        problems = []
        if VmDir(str(source), vmid, uuid).exists():
            problems.append(f"VM {vmid}: its state is still on nodeA")
        try:
            with open_backend("tpm2", tcti=self.tpms["nodeB"].tcti, state_dir=str(target)) as node:
                vm = VmDir(str(target), vmid, uuid)
                opened = {name: data for name, _h, data, _e in engine.open_all(node, vm)}
            if opened != secrets:
                problems.append(f"VM {vmid}: nodeB does not open the secrets that were provisioned on nodeA")
        except Exception as exc:  # any failure is reported with its own message
            problems.append(f"VM {vmid}: nodeB cannot open it: {exc}")
        tpmrm.flush_leftovers(self.tpms["nodeB"].host, self.tpms["nodeB"].port)
        chain = sorted((self.lab.controller_dir / "store" / "vms" / uuid).glob("manifest-*.json"))
        latest = json.loads(base64.b64decode(json.loads(chain[-1].read_text())["payload"])) if chain else None
        if latest is None:
            problems.append(f"VM {vmid}: the store has no manifest of it")
        elif (latest["node"]["name"], latest["state"]) != ("nodeB", "active"):
            problems.append(
                f"VM {vmid}: the store's newest manifest (v{latest['version']}) places it on "
                f"{latest['node']['name']} ({latest['state']}), where its state is not"
            )
        return problems


@dataclasses.dataclass
class Finished:
    returncode: int
    output: str


_TASK = re.compile(r"^TASK \[(?P<task>.*)\] \**$")
_FATAL = re.compile(r"^fatal: \[(?P<host>[^\]\s]+)(?: -> [^\]]+)?\]: FAILED! => (?P<result>.*)$")


def failure_of(output: str, root: Path) -> dict:
    """The failed task of a playbook run and its message, from the default callback's output (the lab's temporary
    directory shown as <lab>)."""
    output = output.replace(str(root), "<lab>")
    task = None
    for line in output.splitlines():
        if match := _TASK.match(line):
            task = match["task"].split(" : ", 1)[-1]
        elif match := _FATAL.match(line):
            try:
                message = json.JSONDecoder().raw_decode(match["result"])[0].get("msg")
            except (ValueError, AttributeError):
                message = match["result"]
            return {"host": match["host"], "task": task, "error": str(message)[:1000]}
    return {"host": None, "task": None, "error": output[-1000:]}


# -- playbook, one VM ------------------------------------------------------------------------------------------


def ratio(mine: float | None, base: float | None) -> float | None:
    """mine ÷ base, rounded; None where either is missing or base is 0."""
    return round(mine / base, 2) if mine is not None and base else None


def playbook_single(lab: TwoNodeLab, sizes: tuple[int, ...], runs: int, log) -> tuple[list[dict], list[dict], dict]:
    """Migrate one VM with N secrets, `runs` times per N, each from the same freshly provisioned start. At
    TRIVIAL_N, each migrate run is preceded by a run of the trivial play from the same start (the baseline)."""
    rows, errors, trivial = [], [], {}
    lab.save("enrolled")
    for n in sizes:
        secrets = make_secrets(n)
        plaintexts = {s.name: s.data for s in secrets}
        try:
            lab.restore("enrolled")
            secrets_file = lab.lab.write_secrets(
                f"bench-{n}.json", [{"name": s.name, "content": s.data.decode()} for s in secrets]
            )
            lab.provision("nodeA", VMID, secrets_file)
            lab.save(f"one-vm-{n}")
        except BenchError as exc:
            errors.append({"part": "playbook", "n": n, "error": str(exc)})
            log(f"migrate playbook N={n}: provisioning failed: {exc}")
            continue
        done, baseline = [], []
        for index in range(runs):
            if n == TRIVIAL_N:
                try:
                    lab.restore(f"one-vm-{n}")
                    steps = {}
                    with lab.meter.window(steps, "trivial"):
                        lab.run_trivial()
                    baseline.append(steps["trivial"])
                    log(f"trivial play run {index + 1}/{runs}: {steps['trivial'].seconds:.2f}s")
                except BenchError as exc:
                    errors.append({"part": "trivial play", "n": n, "error": str(exc)})
                    log(f"trivial play: failed: {exc}")
            try:
                lab.restore(f"one-vm-{n}")
                steps = {}
                with lab.meter.window(steps, "migrate"):
                    output = lab.run("migrate", *lab.migrate_args(VMID))
                if f"VM {VMID} migrated" not in output:
                    raise BenchError(f"the migrate playbook did not report VM {VMID} migrated:\n{output[-3000:]}")
                problems = lab.check_moved(VMID, plaintexts)
                if problems:
                    raise BenchError("; ".join(problems))
            except BenchError as exc:
                errors.append({"part": "playbook", "n": n, "error": str(exc)})
                log(f"migrate playbook N={n}: failed: {exc}")
                continue
            step = steps["migrate"]
            done.append(step)
            log(f"migrate playbook N={n} run {index + 1}/{runs}: {step.seconds:.2f}s {sum(step.tpm.values())} cmds")
        if done:
            row = {"tool": "ironclaw-playbook", "n": n, "runs": len(done), **_row_of(done)}
            rows.append(row)
            if baseline:
                base = {"tool": "trivial-play", "n": n, "runs": len(baseline), **_row_of(baseline)}
                trivial = {
                    "playbook": str(TRIVIAL_PLAY.relative_to(TRIVIAL_PLAY.parents[2])),
                    "migrate_n": n,
                    "trivial": base,
                    "migrate_seconds_median": row["seconds_median"],
                    "ratio": {
                        "seconds": ratio(row["seconds_median"], base["seconds_median"]),
                        "processes": ratio(row["processes"], base["processes"]),
                    },
                }
                log(
                    f"migrate N={n} ÷ trivial play: time ×{trivial['ratio']['seconds']}, "
                    f"processes ×{trivial['ratio']['processes']}"
                )
    return rows, errors, trivial


def _row_of(windows: list[Counted]) -> dict:
    return _row(
        [s.seconds for s in windows],
        [s.tpm for s in windows],
        [s.processes for s in windows],
        [s.tpm_by_node for s in windows],
        [s.leftovers for s in windows],
    )


# -- playbook, fleet -------------------------------------------------------------------------------------------


def fleet(
    lab: TwoNodeLab, sizes: tuple[int, ...], parallel: tuple[int, ...], log, batch_sizes: tuple[int, ...] = ()
) -> dict:
    """For each fleet size M: provision M VMs on nodeA, then migrate each to nodeB, one run at a time; for the
    largest M also P runs at a time; for each of batch_sizes, the whole fleet in one run."""
    rows, errors = [], []
    lab.restore("enrolled")
    secret = make_secrets(1)[0]
    secrets_file = lab.lab.write_secrets("bench-fleet.json", [{"name": secret.name, "content": secret.data.decode()}])
    provisioned = 0
    provision_seconds = 0.0
    for size in sorted(set(sizes) | set(batch_sizes)):
        try:
            start = time.perf_counter()
            while provisioned < size:
                lab.provision("nodeA", FLEET_FIRST_VMID + provisioned, secrets_file)
                provisioned += 1
            provision_seconds += time.perf_counter() - start
            lab.save(f"fleet-{size}")
            log(f"fleet: {size} VM(s) provisioned on nodeA ({provision_seconds:.0f}s so far, not timed)")
        except BenchError as exc:
            errors.append({"part": "fleet", "vms": size, "error": f"provisioning: {exc}"})
            log(f"fleet M={size}: provisioning failed: {exc}")
            break
    for size in sorted(sizes):
        if not (lab.saved / f"fleet-{size}").exists():
            continue
        for workers in sorted(parallel):
            # Runs at once: only for the largest fleet (each costs about as much as one at a time on 2 cores).
            if workers > 1 and (workers > size or size != max(sizes)):
                continue
            try:
                row = _fleet_run(lab, size, workers, {secret.name: secret.data}, log)
            except BenchError as exc:
                errors.append({"part": "fleet", "vms": size, "parallel": workers, "error": str(exc)})
                log(f"fleet M={size} P={workers}: failed: {exc}")
                continue
            rows.append(row)
    for size in sorted(batch_sizes):
        if not (lab.saved / f"fleet-{size}").exists():
            continue
        try:
            rows.append(_fleet_batch_run(lab, size, {secret.name: secret.data}, log))
        except BenchError as exc:
            errors.append({"part": "fleet", "vms": size, "parallel": ONE_RUN, "error": str(exc)})
            log(f"fleet M={size} in one run: failed: {exc}")
    return {
        "rows": rows,
        "errors": errors,
        "provisioned": provisioned,
        "provision_seconds": round(provision_seconds, 1),
    }


def _fleet_run(lab: TwoNodeLab, size: int, workers: int, plaintexts: dict[str, bytes], log) -> dict:
    lab.restore(f"fleet-{size}")
    vmids = [FLEET_FIRST_VMID + i for i in range(size)]
    logs = lab.root / f"fleet-{size}-p{workers}"
    logs.mkdir(exist_ok=True)

    def migrate(vmid: int) -> tuple[int, float, Finished]:
        log_path = logs / f"migrate-{vmid}.log"
        start = time.perf_counter()
        done = lab.finish(*lab.start("migrate", *lab.migrate_args(vmid), log=log_path), log=log_path)
        return vmid, time.perf_counter() - start, done

    windows = {}
    results = []
    with lab.meter.window(windows, "fleet"):
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(migrate, vmids))
    failed = []
    for vmid, _seconds, done in results:
        if done.returncode != 0:
            failed.append({"vmid": vmid, "exit": done.returncode, **failure_of(done.output, lab.lab.root)})
        elif f"VM {vmid} migrated" not in done.output:
            failed.append({"vmid": vmid, "exit": 0, "host": None, "task": None, "error": "no 'migrated' report"})
    window = windows["fleet"]
    log(
        f"fleet M={size} P={workers}: {window.seconds:.1f}s {sum(window.tpm.values())} cmds, "
        f"{len(failed)} of {size} run(s) failed"
    )
    for failure in failed:
        log(f"  VM {failure['vmid']}: {failure['task']}: {failure['error']}")
    rerun = None
    if failed:
        # The migrate playbook converges when re-run: once more, one at a time, for the runs that failed.
        again = {}
        rerun_failed = []
        with lab.meter.window(again, "rerun"):
            for failure in failed:
                log_path = logs / f"rerun-{failure['vmid']}.log"
                done = lab.finish(*lab.start("migrate", *lab.migrate_args(failure["vmid"]), log=log_path), log=log_path)
                if done.returncode != 0:
                    rerun_failed.append({"vmid": failure["vmid"], **failure_of(done.output, lab.lab.root)})
        rerun = {
            "runs": len(failed),
            "seconds": round(again["rerun"].seconds, 3),
            "tpm_commands": sum(again["rerun"].tpm.values()),
            "tpm_by_node": again["rerun"].tpm_by_node,
            "failed": rerun_failed,
        }
        log(f"  re-run of the {len(failed)} failed, one at a time: {rerun['seconds']:.1f}s, {len(rerun_failed)} failed")
    return _fleet_row(lab, vmids, plaintexts, log, workers, window, [s for _vmid, s, _done in results], failed, rerun)


def _fleet_row(lab, vmids, plaintexts, log, parallel, window, run_seconds, failed, rerun) -> dict:
    """A fleet measurement's row, after checking (not timed) that every VM opens on nodeB, none is left on nodeA,
    and the store places each on nodeB."""
    problems = [problem for vmid in vmids for problem in lab.check_moved(vmid, plaintexts)]
    for problem in problems:
        log(f"  not converged: {problem}")
    size = len(vmids)
    return {
        "tool": "ironclaw-playbook",
        "vms": size,
        "parallel": parallel,
        "seconds": round(window.seconds, 3),
        "seconds_per_vm": round(window.seconds / size, 3),
        "run_seconds": [round(s, 3) for s in run_seconds],
        "tpm_commands": sum(window.tpm.values()),
        "tpm_commands_per_vm": round(sum(window.tpm.values()) / size, 1),
        "tpm_by_node": window.tpm_by_node,
        "tpm_by_command": dict(sorted(window.tpm.items())),
        "processes": window.processes,
        "leftovers_flushed": window.leftovers,
        "failed": failed,
        "rerun": rerun,
        "converged": not problems,
        "check_problems": problems,
    }


def _fleet_batch_run(lab: TwoNodeLab, size: int, plaintexts: dict[str, bytes], log) -> dict:
    """The whole fleet in one migrate run (ironclaw_vms): one revocation, one epoch bump on the source."""
    lab.restore(f"fleet-{size}")
    vmids = [FLEET_FIRST_VMID + i for i in range(size)]
    vms = [{"vmid": vmid, "vm_uuid": vm_uuid_of("nodeA", vmid)} for vmid in vmids]
    log_path = lab.root / f"fleet-{size}-one-run.log"
    windows = {}
    with lab.meter.window(windows, "fleet"):
        done = lab.finish(
            *lab.start(
                "migrate",
                "-e",
                json.dumps({"ironclaw_vms": vms, "ironclaw_source": "nodeA", "ironclaw_target": "nodeB"}),
                log=log_path,
            ),
            log=log_path,
        )
    failed = []
    if done.returncode != 0:
        failed.append({"vmid": None, "exit": done.returncode, **failure_of(done.output, lab.lab.root)})
    missing = [vmid for vmid in vmids if f"VM {vmid} migrated" not in done.output]
    if missing and not failed:
        failed.append({"vmid": missing[0], "exit": 0, "host": None, "task": None, "error": "no 'migrated' report"})
    window = windows["fleet"]
    log(f"fleet M={size} in one run: {window.seconds:.1f}s {sum(window.tpm.values())} cmds, exit {done.returncode}")
    return _fleet_row(lab, vmids, plaintexts, log, ONE_RUN, window, [window.seconds], failed, None)


def fleet_model(rows: list[dict], project: tuple[int, ...] = PROJECT_FLEET) -> dict | None:
    """Fit the one-at-a-time fleet totals to a·M + b·M(M-1)/2 and project larger fleets from it.

    Migration i of M finds M-1-i other VMs still on the source, and revoking the migrated copy bumps the source's
    epoch, so each of them is re-approved: a is the cost of one migration, b of one re-approval. A projection, not
    a measurement: it is labelled so wherever it is shown.
    """
    points = sorted((r["vms"], r["seconds"], r["tpm_commands"]) for r in rows if r["parallel"] == 1 and not r["failed"])
    points = [p for p in points if p[0] > 0]
    if len({m for m, _s, _t in points}) < 2:
        return None
    model = {"formula": "a*M + b*M*(M-1)/2", "fitted_to": [m for m, _s, _t in points]}
    for key, column in (("seconds", 1), ("tpm_commands", 2)):
        a, b = _least_squares([(p[0], p[0] * (p[0] - 1) / 2, p[column]) for p in points])
        fitted = [a * m + b * m * (m - 1) / 2 for m, _s, _t in points]
        worst = max(abs(f - point[column]) / point[column] for f, point in zip(fitted, points, strict=True))
        model[key] = {
            "a_per_migration": round(a, 3),
            "b_per_reapproval": round(b, 3),
            "worst_fit_error": round(worst, 4),
            "projected": {str(m): round(a * m + b * m * (m - 1) / 2, 1) for m in project},
        }
    return model


def _least_squares(samples: list[tuple[float, float, float]]) -> tuple[float, float]:
    """a, b minimising the squared error of a*x1 + b*x2 against y, for (x1, x2, y) samples."""
    s11 = sum(x1 * x1 for x1, _x2, _y in samples)
    s12 = sum(x1 * x2 for x1, x2, _y in samples)
    s22 = sum(x2 * x2 for _x1, x2, _y in samples)
    s1y = sum(x1 * y for x1, _x2, y in samples)
    s2y = sum(x2 * y for _x1, x2, y in samples)
    det = s11 * s22 - s12 * s12
    return (s1y * s22 - s2y * s12) / det, (s11 * s2y - s12 * s1y) / det


# -- all of it -------------------------------------------------------------------------------------------------


def measure(
    procs: ProcessCounter,
    *,
    sizes: tuple[int, ...],
    playbook_sizes: tuple[int, ...],
    fleet_sizes: tuple[int, ...],
    fleet_parallel: tuple[int, ...],
    quick: bool,
    log,
    batch_sizes: tuple[int, ...] = (),
) -> dict:
    """The "migration" part of the benchmark's JSON document."""
    doc = {
        "sizes": list(sizes),
        "playbook_sizes": list(playbook_sizes),
        "fleet_sizes": list(fleet_sizes),
        "fleet_parallel": list(fleet_parallel),
        "fleet_one_run_sizes": list(batch_sizes),
        "results": [],
        "fleet": [],
        "errors": [],
        "not_measured": None,
        "trivial_play": None,
    }
    started = time.perf_counter()
    try:
        in_process_run(1, procs)  # proves it works here, warms caches; not recorded
    except Exception as exc:  # any failure is reported with its own message
        doc["errors"].append({"part": "in process", "n": 1, "error": str(exc)})
        log(f"migrate in process: not measurable here: {exc}")
        sizes = ()
    for n in sizes:
        runs = []
        for index in range(1 if quick else RUNS.get(n, 3)):
            try:
                run = in_process_run(n, procs)
            except Exception as exc:  # any failure is reported with its own message
                doc["errors"].append({"part": "in process", "n": n, "error": str(exc)})
                log(f"migrate in process N={n}: failed: {exc}")
                continue
            runs.append(run)
            steps = ", ".join(f"{s} {c.seconds:.3f}s {sum(c.tpm.values())} cmds" for s, c in run["steps"].items())
            log(f"migrate in process N={n} run {index + 1}: {steps}; bundle {run['bundle_bytes']} bytes")
        if runs:
            doc["results"].append(summarize_in_process(n, runs))
    reason = TwoNodeLab.missing()
    if reason is None and (playbook_sizes or fleet_sizes or batch_sizes):
        root = Path(tempfile.mkdtemp(prefix="ironclaw-bench-migrate-lab-"))
        try:
            with TwoNodeLab(root, procs) as lab:
                doc["playbook_setup_tpm_commands"] = lab.setup_tpm
                rows, errors, trivial = playbook_single(lab, playbook_sizes, 1 if quick else PLAYBOOK_RUNS, log)
                doc["results"] += rows
                doc["errors"] += errors
                doc["trivial_play"] = trivial or None
                done = fleet(lab, fleet_sizes, fleet_parallel, log, batch_sizes)
                doc["fleet"] = done["rows"]
                doc["errors"] += done["errors"]
                # Not timed: one provision run per VM of the largest fleet, each fleet size saved on the way.
                doc["fleet_provisioning"] = {"vms": done["provisioned"], "seconds": done["provision_seconds"]}
                doc["fleet_model"] = fleet_model(doc["fleet"], tuple(m for m in PROJECT_FLEET if m not in fleet_sizes))
        except Exception as exc:  # any failure is reported with its own message
            doc["errors"].append({"part": "playbook lab", "error": str(exc)})
            log(f"migrate playbook: failed: {exc}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    elif reason:
        doc["not_measured"] = f"playbook: {reason}"
    doc["targets"] = targets(doc)
    doc["seconds_total"] = round(time.perf_counter() - started, 1)
    return doc


def targets(mig: dict) -> list[dict]:
    """The measured values against the targets of issue #13 (TARGETS), where this run measured them."""
    fleet_one_run = {r["vms"]: r for r in mig.get("fleet", []) if r["parallel"] == ONE_RUN and not r["failed"]}
    measured = {
        "migrate_over_trivial_play": (mig.get("trivial_play") or {}).get("ratio", {}).get("seconds"),
        "fleet_one_run_seconds": (fleet_one_run.get(TARGET_FLEET_VMS) or {}).get("seconds"),
    }
    return [
        {
            "target": key,
            "what": what,
            "at_most": limit,
            "measured": measured[key],
            "met": None if measured[key] is None else measured[key] <= limit,
        }
        for key, what, limit in TARGETS
    ]
