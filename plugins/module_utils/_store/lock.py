# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run locks in the manifest store: one per VM a playbook changes, one per node whose epoch it may bump.

They live where every controller sees them, on the store host (DESIGN §7 A7)::

    <store>/locks/<name>.json       the holder record (canonical JSON, 0600), one file per lock
    <store>/locks/.locks/mutex.lock  a short flock taken around every change to the directory

A lock is taken by creating its file (hard link of a fully written temp file: it never replaces a file), and
only for the whole list of names at once: under the mutex, every name is checked first, then all are written,
or none. A run that finds a name held waits (outside the mutex) and tries again until its timeout, then fails
naming the holder: playbook, controller, user, pid, since when, run id.

A holder's run id is derived from its controller process (the ansible-playbook process, its start time, the
machine), so every task of one run computes the same id, and no other run can. A lock is taken over without
asking only when its holder is provably dead: recorded on this very machine (same boot, same pid namespace) and
its process is gone or is another process now. Any other stale lock (killed on another controller, lease expired
without renewal) is reported as such and broken only on request, by its run id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from datetime import UTC, datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError, LockError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    remove_file,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.lock import locked
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical

LOCK_FORMAT = "ironclaw-lock/1"
LOCKS_DIR = "locks"
DEFAULT_TIMEOUT = 300
DEFAULT_LEASE = 3600
POLL_INTERVAL = 1.0
_RUN_ID = re.compile(r"[0-9a-f]{16}")
_MAX_NAME = 200  # <name>.json stays well inside NAME_MAX
_HOLDER_FIELDS = {
    "run_id": str,
    "playbook": str,
    "host": str,
    "user": str,
    "pid": int,
    "pid_start": int,
    "machine": str,
}
_FIELDS = {**_HOLDER_FIELDS, "format": str, "name": str, "since": str, "expires": str}


def lock_name(value: object) -> str:
    """``vm-<vmid>`` or ``node-<node name>``: also a file name in the store."""
    kind, _dash, rest = value.partition("-") if isinstance(value, str) else ("", "", "")
    if kind == "vm" and str(validate.vmid(rest)) == rest:  # a bad VMID gets the VMID's own message
        return value
    if kind == "node" and len(value) <= _MAX_NAME:
        try:
            if validate.node_name(rest) == rest:
                return value
        except InputError:
            pass
    raise InputError(
        f"lock name must be vm-<VMID> or node-<node name> (at most {_MAX_NAME} characters), "
        f"found {canonical.show(value)}"
    )


def run_id(value: object) -> str:
    if not isinstance(value, str) or not _RUN_ID.fullmatch(value):
        raise InputError(
            f"a run id is 16 lowercase hex characters (as a lock error shows it), found {canonical.show(value)}"
        )
    return value


# -- who is this process, and is that one still alive -------------------------------------------------------------
def process_start(pid: int) -> int:
    """Start time of a process (clock ticks since boot, /proc/<pid>/stat field 22); -1 if it is gone, 0 if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return -1
    except OSError:
        return 0
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 0


def machine_id() -> str:
    """Boot id and pid namespace: where a pid names one process. Empty where unknown (no /proc)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            boot = fh.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def derive_run_id(host: str, machine: str, pid: int, pid_start: int) -> str:
    return hashlib.sha256(f"{host}\n{machine}\n{pid}\n{pid_start}".encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds (or asks for) a lock: one ansible-playbook run on one controller."""

    run_id: str
    playbook: str
    host: str
    user: str
    pid: int
    pid_start: int
    machine: str

    @classmethod
    def of_process(cls, pid: int, playbook: str, host: str, user: str) -> Holder:
        """The holder record of a controller process (the action plugin passes ansible-playbook's pid)."""
        machine, start = machine_id(), max(process_start(pid), 0)
        return cls(derive_run_id(host, machine, pid, start), playbook, host, user, pid, start, machine)

    @classmethod
    def from_dict(cls, doc: object) -> Holder:
        what = "lock holder"
        canonical.require_fields(doc, _HOLDER_FIELDS, what)
        run_id(doc["run_id"])
        if doc["pid"] < 1 or doc["pid_start"] < 0:
            raise InputError(f"{what}: pid must be positive and pid_start not negative")
        return cls(**doc)

    def describe(self) -> str:
        return f"run {self.run_id} ({self.playbook}, {self.user}@{self.host}, pid {self.pid})"


@dataclasses.dataclass(frozen=True)
class Record:
    """A lock file: its name, its holder, when it was taken and until when its lease runs."""

    name: str
    holder: Holder
    since: str
    expires: str

    def to_bytes(self) -> bytes:
        doc = dataclasses.asdict(self.holder)
        doc.update(format=LOCK_FORMAT, name=self.name, since=self.since, expires=self.expires)
        return canonical.dumps(doc)

    def describe(self) -> str:
        return f"{self.name}: held by {self.holder.describe()} since {self.since}"


def parse_record(data: bytes, path: str) -> Record:
    what = f"lock file {path}"
    doc = canonical.loads(data, what)
    canonical.require_format(doc, LOCK_FORMAT, what)
    canonical.require_fields(doc, _FIELDS, what)
    for field in ("since", "expires"):
        canonical.timestamp_field(doc[field], what, field)
    if f"{doc['name']}.json" != os.path.basename(path):
        raise FormatError(f"{what}: names lock {canonical.show(doc['name'])}; a lock file was renamed or copied")
    holder = {k: doc[k] for k in _HOLDER_FIELDS}
    try:
        return Record(doc["name"], Holder.from_dict(holder), doc["since"], doc["expires"])
    except InputError as err:
        raise FormatError(f"{what}: {err}") from None


def holder_is_dead(holder: Holder, here: str, start_of=process_start) -> bool:
    """Provably dead: recorded on this machine (same boot, same pid namespace) and its process is gone or replaced."""
    if not holder.machine or holder.machine != here:
        return False
    now_start = start_of(holder.pid)
    return now_start == -1 or (now_start > 0 and holder.pid_start > 0 and now_start != holder.pid_start)


# -- the lock directory ----------------------------------------------------------------------------------------
class LockDir:
    """``<store>/locks``. `clock` gives seconds since the epoch, `sleep` waits: both injectable for tests."""

    def __init__(self, store_dir: str, clock=time.time, sleep=time.sleep, here: str | None = None, start_of=None):
        if not os.path.isdir(store_dir):
            raise InputError(
                f"store directory {store_dir} not found on this host: run the init playbook first, or check "
                "ironclaw_store_host and ironclaw_store_dir"
            )
        self.path = os.path.join(store_dir, LOCKS_DIR)
        self.clock, self.sleep = clock, sleep
        self.here = machine_id() if here is None else here
        self.start_of = start_of or process_start

    def _file(self, name: str) -> str:
        return os.path.join(self.path, f"{name}.json")

    def read(self, name: str) -> Record | None:
        path = self._file(name)
        try:
            data = read_regular(path, "lock file", max_size=4096)
        except FileNotFoundError:
            return None
        return parse_record(data, path)

    def _timestamp(self, seconds: float) -> str:
        return canonical.utc_timestamp(datetime.fromtimestamp(int(seconds), UTC))

    def _expired(self, record: Record) -> bool:
        return canonical.parse_timestamp(record.expires, "expires").timestamp() <= self.clock()

    # One pass under the mutex: decide for every name first, then write all or nothing.
    def _try(self, names: list[str], me: Holder, lease: int, break_run: str | None, check_mode: bool) -> dict:
        plan = {"acquired": [], "renewed": [], "taken_over": [], "broken": [], "blocked": []}
        current = {}
        for name in names:
            record = current[name] = self.read(name)
            if record is None:
                plan["acquired"].append(name)
            elif record.holder.run_id == me.run_id:
                plan["renewed"].append(name)
            elif break_run is not None and record.holder.run_id == break_run:
                plan["broken"].append(record)
            elif holder_is_dead(record.holder, self.here, self.start_of):
                plan["taken_over"].append(record)
            else:
                plan["blocked"].append(record)
        if plan["blocked"] or check_mode:
            return plan
        now = self.clock()
        expires = self._timestamp(now + lease)
        written = []
        try:
            for name in names:
                old = current[name]
                mine = old is not None and old.holder.run_id == me.run_id
                fresh = Record(name, me, old.since if mine else self._timestamp(now), expires)
                if old is not None and not mine:
                    # A dead or broken holder, read under the mutex: only that very record goes.
                    remove_file(self._file(name))
                # A renewal replaces our own record; anything else is created, never replaced.
                write_atomic(self._file(name), fresh.to_bytes(), exclusive=not mine)
                if not mine:
                    written.append(name)
        except BaseException:
            # All or nothing: the locks this call created go again.
            for name in written:
                remove_file(self._file(name))
            raise
        return plan

    def acquire(
        self,
        names: list[str],
        me: Holder,
        timeout: float = DEFAULT_TIMEOUT,
        lease: int = DEFAULT_LEASE,
        break_run: str | None = None,
        check_mode: bool = False,
    ) -> dict:
        """Take every lock in `names` for `me`, or none; wait up to `timeout` s for other holders, then LockError."""
        names = sorted({lock_name(name) for name in names})
        if not names:
            raise InputError("no lock named: give at least one (vm-<VMID>, node-<name>)")
        if check_mode and not os.path.isdir(self.path):
            return {"acquired": names, "renewed": [], "taken_over": [], "broken": [], "blocked": [], "waited": 0}
        ensure_dir(self.path)
        started = self.clock()
        while True:
            with locked(self.path, "mutex", timeout=max(timeout, 1.0)):
                plan = self._try(names, me, lease, break_run, check_mode)
            waited = self.clock() - started
            if not plan["blocked"] or check_mode:
                plan["waited"] = int(waited)
                return plan
            if waited >= timeout:
                raise LockError(self._blocked_message(plan["blocked"], timeout))
            self.sleep(min(POLL_INTERVAL, max(timeout - waited, 0.01)))

    def _blocked_message(self, blocked: list[Record], timeout: float) -> str:
        parts = []
        for record in blocked:
            state = (
                f"its lease expired at {record.expires} without renewal: that run is probably dead"
                if self._expired(record)
                else f"lease until {record.expires}"
            )
            parts.append(f"{record.describe()} ({state})")
        runs = sorted({record.holder.run_id for record in blocked})
        return (
            f"waited {timeout:.0f}s for another ironclaw run: {'; '.join(parts)}. Nothing was changed. Wait for that "
            "run to finish and run again. Only if it is dead (killed, its controller lost), break its lock with "
            + " or ".join(f"-e ironclaw_break_lock={run}" for run in runs)
        )

    def release(self, names: list[str], me: Holder, check_mode: bool = False) -> dict:
        """Remove the locks in `names` that `me` holds; leave any other holder's lock alone."""
        names = sorted({lock_name(name) for name in names})
        result = {"released": [], "not_held": []}
        if not os.path.isdir(self.path):
            result["not_held"] = names
            return result
        with locked(self.path, "mutex"):
            for name in names:
                record = self.read(name)
                if record is None or record.holder.run_id != me.run_id:
                    result["not_held"].append(name)
                    continue
                if not check_mode:
                    remove_file(self._file(name))
                result["released"].append(name)
        return result
