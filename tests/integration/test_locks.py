"""Run locks in the store through the playbooks (DESIGN §7 A7): two migrations of one VM at once, or a
decommission during its migration, are serialized or refused naming the run that holds the VM, and nothing is
lost; a killed run's locks are taken over by the next run on the same controller, and a lock of a run elsewhere
is broken only by its run id."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import signal
import sys
import time

import pytest
from playbook_rig import CALLBACKS, DEBIAN_PYTHON, PLAYBOOKS, Lab, enrolled_lab, vm_uuid_of

pytestmark = pytest.mark.swtpm

VMID = 300
UUID = vm_uuid_of("nodeA", VMID)
SHORT = ("-e", "ironclaw_lock_timeout=2")
ACQUIRE_TASK = "Take the run's locks in the store, one per VM and one for the source node"


def three_nodes(root):
    """nodeA (Debian's python), nodeB and nodeC (the venv's), each on its own swtpm, enrolled; VM 300 on nodeA."""
    nodes = [("nodeA", "tpm2", DEBIAN_PYTHON), ("nodeB", "tpm2", sys.executable), ("nodeC", "tpm2", sys.executable)]
    return enrolled_lab(root, nodes, provision=(("nodeA", VMID),))


@pytest.fixture
def lab(tmp_path, playbook_tools):
    # pytest closes the fixture's generator, which exits the context
    # pylint: disable-next=contextmanager-generator-missing-cleanup
    with three_nodes(tmp_path) as made:
        yield made


def migrate_args(target: str, source: str = "nodeA") -> list[str]:
    return [
        *["-e", f"ironclaw_vmid={VMID}", "-e", f"ironclaw_vm_uuid={UUID}"],
        *["-e", f"ironclaw_source={source}", "-e", f"ironclaw_target={target}"],
    ]


def lock_file(lab: Lab, name: str):
    return lab.controller_dir / "store" / "locks" / f"{name}.json"


def held_locks(lab: Lab) -> list[str]:
    return sorted(p.name for p in (lab.controller_dir / "store" / "locks").glob("*.json"))


def wait_for_lock(lab: Lab, name: str, proc, timeout: float = 120) -> dict:
    """The holder record of `name` once the running `proc` took it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            return json.loads(lock_file(lab, name).read_bytes())
        assert proc.poll() is None, "the first run ended before it took the lock"
        time.sleep(0.05)
    pytest.fail(f"{name} was not taken in {timeout}s")


def unsealed(lab: Lab, node: str, dest, expect_fail=False) -> dict[str, bytes]:
    shutil.rmtree(dest, ignore_errors=True)
    args = ["-e", f"ironclaw_node={node}", "-e", f"ironclaw_vmid={VMID}", "-e", f"ironclaw_vm_uuid={UUID}"]
    lab.run(str(PLAYBOOKS / "unseal.yml"), *args, "-e", f"unseal_dest={dest}", expect_fail=expect_fail)
    return {} if expect_fail else {p.name: p.read_bytes() for p in dest.iterdir()}


def store_nodes(lab: Lab) -> list[str]:
    """The node of each manifest in the VM's chain, oldest first."""
    payloads = [
        json.loads(base64.b64decode(json.loads(p.read_text())["payload"])) for p in lab.store_chain("nodeA", VMID)
    ]
    return [m["node"]["name"] for m in payloads]


def assert_on_exactly(lab: Lab, node: str, tmp_path) -> None:
    """Nothing lost: the VM verifies and unseals its own bytes on `node`, no other node holds it, the chain verifies,
    and no lock is left behind."""
    lab.run("verify", *lab.vm_args(node, VMID, UUID))
    assert unsealed(lab, node, tmp_path / "out") == lab.plaintexts
    assert [name for name in lab.nodes if lab.vm_dir(name, VMID).exists()] == [node]
    assert store_nodes(lab)[-1] == node
    assert held_locks(lab) == []


def test_two_migrations_of_one_vm_at_once_one_fails_naming_the_other(lab, tmp_path):
    assert held_locks(lab) == [], "provision released the VM's lock"
    first = lab.start("migrate", *migrate_args("nodeB"))
    holder = wait_for_lock(lab, f"vm-{VMID}", first)
    assert holder["playbook"] == "migrate" and holder["pid"] == first.pid
    # To another target at once: refused after the (short) timeout, naming the run that holds the VM.
    second = lab.run("migrate", *migrate_args("nodeC"), *SHORT, expect_fail=True)
    named = f"held by run {holder['run_id']} (migrate, {holder['user']}@{holder['host']}, pid {first.pid})"
    assert named in second.stdout, second.stdout[-3000:]
    assert not lab.vm_dir("nodeC", VMID).exists(), "the refused run imported nothing"
    assert f"pid {first.pid})" in second.stdout and f"-e ironclaw_break_lock={holder['run_id']}" in second.stdout
    # A third run that waits long enough runs after the first, and finds the VM gone from its source.
    third = lab.start("migrate", *migrate_args("nodeC"), "-e", "ironclaw_lock_timeout=170")
    lab.wait(first)
    waited = lab.wait(third, expect_fail=True)
    assert "not on the source nodeA" in waited.stdout, waited.stdout[-3000:]
    assert_on_exactly(lab, "nodeB", tmp_path)
    assert store_nodes(lab) == ["nodeA", "nodeB"], "one migration recorded, not two"


def test_decommission_during_a_migration_is_refused_naming_it(lab, tmp_path):
    migration = lab.start("migrate", *migrate_args("nodeB"))
    holder = wait_for_lock(lab, f"vm-{VMID}", migration)
    refused = lab.run("decommission", "-e", f"ironclaw_vmid={VMID}", *SHORT, expect_fail=True)
    assert f"held by run {holder['run_id']} (migrate, " in refused.stdout, refused.stdout[-3000:]
    lab.wait(migration)
    assert_on_exactly(lab, "nodeB", tmp_path)


def test_provision_on_a_node_a_migration_leaves_is_refused_naming_it(lab, tmp_path):
    """A provision signs its approval for the node's current epoch: while a migration away from the node holds the
    node (its epoch bump is coming), a provision of another VM there waits, then fails naming the migration, and
    nothing of the new VM is written anywhere."""
    migration = lab.start("migrate", *migrate_args("nodeB"))
    holder = wait_for_lock(lab, "node-nodeA", migration)
    other = VMID + 1
    refused = lab.provision("nodeA", other, extra=SHORT, expect_fail=True)
    assert f"held by run {holder['run_id']} (migrate, " in refused.stdout, refused.stdout[-3000:]
    assert not lab.vm_dir("nodeA", other).exists()
    assert not (lab.controller_dir / "store" / "vms" / vm_uuid_of("nodeA", other)).exists()
    lab.wait(migration)
    assert_on_exactly(lab, "nodeB", tmp_path)


def test_killed_run_is_taken_over_here_and_broken_by_run_id_elsewhere(lab, tmp_path):
    env = {
        "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS),
        "ANSIBLE_CALLBACKS_ENABLED": "kill_after",
        "IRONCLAW_KILL_AFTER": ACQUIRE_TASK,
    }
    killed = lab.start("migrate", *migrate_args("nodeB"), env_extra=env)
    killed.communicate(timeout=180)
    assert killed.returncode == -signal.SIGKILL
    assert held_locks(lab) == ["node-nodeA.json", f"vm-{VMID}.json"], "a killed run leaves its locks"
    # As if it had been killed on another controller: its pid proves nothing here, so it is not taken over.
    for name in held_locks(lab):
        path = lab.controller_dir / "store" / "locks" / name
        record = json.loads(path.read_bytes())
        record["machine"] = "another-controller-boot/pid:[4026531836]"
        path.write_bytes(json.dumps(record, sort_keys=True, separators=(",", ":")).encode())
    before = lab.snapshot()
    refused = lab.run("migrate", *migrate_args("nodeB"), *SHORT, expect_fail=True)
    assert f"-e ironclaw_break_lock={record['run_id']}" in refused.stdout, refused.stdout[-3000:]
    assert lab.snapshot() == before
    # A wrong run id breaks nothing.
    lab.run("migrate", *migrate_args("nodeB"), *SHORT, "-e", "ironclaw_break_lock=0123456789abcdef", expect_fail=True)
    assert lab.snapshot() == before
    lab.run("migrate", *migrate_args("nodeB"), "-e", f"ironclaw_break_lock={record['run_id']}")
    assert_on_exactly(lab, "nodeB", tmp_path)

    # Killed on this controller: the next run takes its locks over by itself and finishes the move.
    killed = lab.start("migrate", *migrate_args("nodeA", source="nodeB"), env_extra=env)
    killed.communicate(timeout=180)
    assert killed.returncode == -signal.SIGKILL and held_locks(lab) == ["node-nodeB.json", f"vm-{VMID}.json"]
    lab.run("migrate", *migrate_args("nodeA", source="nodeB"), *SHORT)
    assert_on_exactly(lab, "nodeA", tmp_path)
    # A run that fails releases its locks.
    failed = lab.run("migrate", *migrate_args("nodeC", source="nodeB"), *SHORT, expect_fail=True)
    assert "not on the source nodeB" in failed.stdout, failed.stdout[-3000:]
    assert held_locks(lab) == []
