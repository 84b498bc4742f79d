"""Run locks in the store (DESIGN §7 A7): a second run waits then fails naming the holder, a list is taken whole
or not at all, a provably dead holder is taken over and a live one never, a lock is broken only by its run id,
a run releases only its own locks, and nothing in the locks directory is followed through a symlink."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import subprocess

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.lock_states import lock_state
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError, LockError
from ansible_collections.ironclaw.sealed.plugins.module_utils._store import lock
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.lock import Holder, LockDir

HERE = lock.machine_id()


class Clock:
    """Injected time: sleeping moves it forward, and every sleep is recorded."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.now, self.sleeps = start, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def dead_pid() -> int:
    """A pid that no process has any more: a child that exited and was reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def holder(playbook="migrate", pid=None, machine=HERE, host="ctl1", user="alice", pid_start=None) -> Holder:
    pid = os.getpid() if pid is None else pid
    start = lock.process_start(pid) if pid_start is None else pid_start
    start = max(start, 0)
    return Holder(lock.derive_run_id(host, machine, pid, start), playbook, host, user, pid, start, machine)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def clock():
    return Clock()


def locks_of(store, clock) -> LockDir:
    return LockDir(str(store), clock=clock, sleep=clock.sleep)


def files(store) -> dict[str, bytes]:
    """Every lock file and its bytes (the mutex's own directory left out)."""
    directory = store / "locks"
    if not directory.exists():
        return {}
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name != ".locks"}


# A run elsewhere that is alive as far as anyone here can tell: another machine's record.
OTHER = holder(playbook="decommission", machine="other-boot/pid:[1]", host="ctl2", user="bob", pid=4242, pid_start=7)


def test_second_run_waits_then_fails_naming_the_holder(store, clock):
    locks = locks_of(store, clock)
    locks.acquire(["vm-300"], OTHER)
    before = files(store)
    with pytest.raises(LockError) as err:
        locks.acquire(["vm-300"], holder(), timeout=5)
    message = str(err.value)
    for part in (OTHER.run_id, "decommission", "bob@ctl2", "pid 4242", "since 2027-01-15T08:00:00Z"):
        assert part in message, message
    assert f"-e ironclaw_break_lock={OTHER.run_id}" in message
    # It waited the whole timeout (polling), not just once, and left the lock as it was.
    assert sum(clock.sleeps) == pytest.approx(5) and len(clock.sleeps) >= 5
    assert files(store) == before


def test_second_run_gets_the_lock_once_the_first_releases_it(store, clock):
    locks = locks_of(store, clock)
    locks.acquire(["vm-300"], OTHER)

    def release_after_two_polls(seconds):
        Clock.sleep(clock, seconds)
        if len(clock.sleeps) == 2:
            locks.release(["vm-300"], OTHER)

    clock.sleep = release_after_two_polls
    locks.sleep = release_after_two_polls
    me = holder()
    done = locks.acquire(["vm-300"], me, timeout=30)
    assert done["acquired"] == ["vm-300"] and done["waited"] == 2
    assert locks.read("vm-300").holder == me


def test_partial_list_takes_nothing_when_one_lock_is_held(store, clock):
    locks = locks_of(store, clock)
    locks.acquire(["vm-301"], OTHER)
    before = files(store)
    me = holder()
    with pytest.raises(LockError, match="vm-301"):
        locks.acquire(["vm-302", "node-nodeA", "vm-301", "vm-300"], me, timeout=0)
    assert files(store) == before, "no lock of the list is held after the failure"
    assert all(locks.read(name) is None for name in ("vm-300", "vm-302", "node-nodeA"))


def test_dead_holder_on_this_machine_is_taken_over(store, clock):
    locks = locks_of(store, clock)
    killed = holder(pid=dead_pid(), pid_start=12345)
    locks.acquire(["vm-300", "node-nodeA"], killed)
    me = holder()
    done = locks.acquire(["vm-300", "node-nodeA"], me, timeout=0)
    assert done["acquired"] == [] and len(done["taken_over"]) == 2
    assert killed.run_id in done["taken_over"][0].describe()
    assert {locks.read(name).holder for name in ("vm-300", "node-nodeA")} == {me}


def test_reused_pid_on_this_machine_counts_as_dead(store, clock):
    """The recorded pid runs again, but it is another process now (another start time)."""
    locks = locks_of(store, clock)
    gone = holder(pid=os.getpid(), pid_start=lock.process_start(os.getpid()) + 1)
    locks.acquire(["vm-300"], gone)
    assert len(locks.acquire(["vm-300"], holder(pid=os.getppid()), timeout=0)["taken_over"]) == 1


def test_live_holder_is_not_taken_over(store, clock):
    locks = locks_of(store, clock)
    alive = holder(pid=os.getppid())  # pytest's parent: alive, on this machine
    locks.acquire(["vm-300"], alive)
    # A dead pid recorded on another machine (or boot) proves nothing about that run.
    elsewhere = holder(pid=dead_pid(), machine="another-boot/pid:[4026531836]")
    locks.acquire(["vm-301"], elsewhere)
    before = files(store)
    for name, holding in (("vm-300", alive), ("vm-301", elsewhere)):
        with pytest.raises(LockError, match=holding.run_id):
            locks.acquire([name], holder(), timeout=0)
    assert files(store) == before


def test_expired_lease_is_reported_not_taken_over(store, clock):
    locks = locks_of(store, clock)
    locks.acquire(["vm-300"], OTHER, lease=600)
    clock.now += 601
    before = files(store)
    with pytest.raises(LockError, match="lease expired at .* without renewal: that run is probably dead"):
        locks.acquire(["vm-300"], holder(), timeout=0)
    assert files(store) == before


def test_break_lock_breaks_only_the_named_run(store, clock):
    locks = locks_of(store, clock)
    third = holder(playbook="provision", machine="third/pid:[1]", host="ctl3", pid=99, pid_start=1)
    locks.acquire(["vm-300"], OTHER)
    locks.acquire(["vm-301"], third)
    before = files(store)
    me = holder()
    # All or nothing here too: vm-301 is not OTHER's, so OTHER's lock is not broken either.
    with pytest.raises(LockError, match=third.run_id):
        locks.acquire(["vm-300", "vm-301"], me, timeout=0, break_run=OTHER.run_id)
    assert files(store) == before
    done = locks.acquire(["vm-300"], me, timeout=0, break_run=OTHER.run_id)
    assert len(done["broken"]) == 1 and locks.read("vm-300").holder == me
    assert locks.read("vm-301").holder == third
    before = files(store)
    with pytest.raises(InputError, match="run id"):
        lock_state(
            {
                "state": "acquired",
                "locks": ["vm-301"],
                "store_dir": str(store),
                "timeout": 0,
                "lease": 3600,
                "break_lock": "vm-301",
                "playbook": None,
                "holder": dataclasses.asdict(me),
            },  # fmt: skip
            False,
        )
    assert files(store) == before


def test_break_lock_with_another_run_id_breaks_nothing(store, clock):
    """A well-formed run id that is not the holder's (a typo, another dead run) breaks nothing, here or elsewhere."""
    locks = locks_of(store, clock)
    locks.acquire(["vm-300"], OTHER)
    before = files(store)
    for wrong in ("0123456789abcdef", holder().run_id):
        with pytest.raises(LockError, match=OTHER.run_id):
            locks.acquire(["vm-300", "node-nodeA"], holder(), timeout=0, break_run=wrong)
        assert files(store) == before


def test_release_leaves_other_runs_locks(store, clock):
    locks = locks_of(store, clock)
    me = holder()
    locks.acquire(["vm-300"], OTHER)
    locks.acquire(["vm-301"], me)
    done = locks.release(["vm-300", "vm-301", "vm-302"], me)
    assert done == {"released": ["vm-301"], "not_held": ["vm-300", "vm-302"]}
    assert locks.read("vm-300").holder == OTHER and locks.read("vm-301") is None


def test_same_run_renews_its_lock(store, clock):
    locks = locks_of(store, clock)
    me = holder()
    locks.acquire(["vm-300"], me, lease=600)
    first = locks.read("vm-300")
    clock.now += 500
    again = locks.acquire(["vm-300", "vm-301"], me, lease=600, timeout=0)
    assert again["renewed"] == ["vm-300"] and again["acquired"] == ["vm-301"]
    renewed = locks.read("vm-300")
    assert renewed.since == first.since and renewed.expires > first.expires


def test_check_mode_takes_nothing(store, clock):
    locks = locks_of(store, clock)
    plan = locks.acquire(["vm-300"], holder(), check_mode=True)
    assert plan["acquired"] == ["vm-300"] and not (store / "locks").exists()
    locks.acquire(["vm-301"], OTHER)
    before = files(store)
    plan = locks.acquire(["vm-300", "vm-301"], holder(), timeout=300, check_mode=True)
    assert [r.holder for r in plan["blocked"]] == [OTHER] and clock.sleeps == []
    assert files(store) == before


def test_symlink_in_locks_dir_is_refused(store, clock, tmp_path):
    locks = locks_of(store, clock)
    locks.acquire(["vm-301"], OTHER)
    target = tmp_path / "elsewhere.json"
    target.write_bytes(b"not a lock")
    (store / "locks" / "vm-300.json").symlink_to(target)
    before = files(store)
    with pytest.raises(FormatError, match="symlink"):
        locks.acquire(["vm-300"], holder(), timeout=0)
    with pytest.raises(FormatError, match="symlink"):
        locks.release(["vm-300"], holder())
    assert target.read_bytes() == b"not a lock" and (store / "locks" / "vm-300.json").is_symlink()
    assert files(store) == before


def test_symlinked_locks_dir_is_refused(tmp_path, clock):
    store = tmp_path / "store"
    store.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (store / "locks").symlink_to(elsewhere)
    with pytest.raises(InputError, match="symlink"):
        locks_of(store, clock).acquire(["vm-300"], holder(), timeout=0)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    "tamper",
    [
        lambda data: data.replace(b'"name":"vm-301"', b'"name":"vm-302"'),  # a lock file copied to another name
        lambda data: data + b"\n",  # trailing bytes
        lambda data: data.replace(b"ironclaw-lock/1", b"ironclaw-lock/2"),  # unknown version
    ],
    ids=["renamed", "trailing-bytes", "unknown-version"],
)
def test_tampered_lock_file_is_refused_not_taken(store, clock, tamper):
    locks = locks_of(store, clock)
    locks.acquire(["vm-301"], OTHER)
    path = store / "locks" / "vm-301.json"
    path.write_bytes(tamper(path.read_bytes()))
    before = files(store)
    with pytest.raises(FormatError, match="vm-301.json"):
        locks.acquire(["vm-301"], holder(), timeout=0)
    assert files(store) == before


def test_missing_store_is_refused_not_created(tmp_path, clock):
    with pytest.raises(InputError, match="store directory"):
        LockDir(str(tmp_path / "nonexistent" / "store"))
    assert not (tmp_path / "nonexistent").exists()


@pytest.mark.parametrize(
    "name", ["vm-99", "vm-0300", "vm-300/../x", "node-", "node-../x", "node-.hidden", "x-300", "vm-300.json", "VM-300"]
)
def test_bad_lock_names_are_refused(store, clock, name):
    with pytest.raises(InputError, match="lock name|VMID"):
        locks_of(store, clock).acquire([name], holder(), timeout=0)
    assert files(store) == {}


def test_run_id_names_one_process():
    mine, again = Holder.of_process(os.getpid(), "migrate", "ctl1", "alice"), holder(pid=os.getpid())
    assert mine.run_id == again.run_id
    assert Holder.of_process(os.getppid(), "migrate", "ctl1", "alice").run_id != mine.run_id


def test_module_needs_the_holder_from_the_action_plugin(store):
    params = {"state": "acquired", "locks": ["vm-300"], "store_dir": str(store), "timeout": 0, "lease": 3600}
    with pytest.raises(InputError, match="action plugin"):
        lock_state({**params, "break_lock": None, "playbook": None, "holder": None}, False)
    assert files(store) == {}


def _race(store: str, index: int, start, results) -> None:
    me = Holder(f"{index:016x}", "migrate", f"ctl{index}", "alice", 1000 + index, 1, f"racer-{index}")
    start.wait()
    try:
        LockDir(store).acquire(["node-nodeA", "vm-300"], me, timeout=0)
        results.put(index)
    except LockError:
        results.put(None)


def test_racing_runs_get_the_lock_exactly_once(store):
    """Real processes at once: the mutex and exclusive creation leave exactly one holder of the whole list."""
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    racers = [context.Process(target=_race, args=(str(store), index, start, results)) for index in range(1, 7)]
    for racer in racers:
        racer.start()
    start.set()
    outcomes = [results.get(timeout=30) for _ in racers]
    for racer in racers:
        racer.join(timeout=30)
    winners = [index for index in outcomes if index is not None]
    assert len(winners) == 1
    locks = LockDir(str(store))
    assert {locks.read(name).holder.run_id for name in ("node-nodeA", "vm-300")} == {f"{winners[0]:016x}"}
