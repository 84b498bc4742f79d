"""Decommission through the playbooks: what it destroys, what it leaves working, its receipt, its failures."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import sys
from datetime import UTC, datetime

import pytest
from playbook_rig import DEBIAN_PYTHON, Lab, changed_tasks, enrolled_lab, lab_from_template, task_count, vm_uuid_of

from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.receipt import verify_receipt
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import load_chain

pytestmark = pytest.mark.swtpm

GONE, NEIGHBOUR = 200, 201


@pytest.fixture
def lab(tmp_path, playbook_tools):
    """nodeA on a swtpm (Debian's python), nodeB with the software backend, both enrolled."""
    # pytest closes the fixture's generator, which exits the context
    # pylint: disable-next=contextmanager-generator-missing-cleanup
    with enrolled_lab(tmp_path, [("nodeA", "tpm2", DEBIAN_PYTHON), ("nodeB", "software", sys.executable)]) as lab:
        yield lab


@pytest.fixture
def moved_lab(tmp_path, playbook_tools):
    """Two swtpm nodes; VM GONE provisioned on nodeA, migrated to nodeB, and a backup of nodeA's revoked copy
    put back there: the VM's history names both nodes and both hold files of it."""

    def build(lab: Lab) -> None:
        lab.run("init", "-e", f"ironclaw_controller_dir={lab.controller_dir}")
        lab.run("enroll")
        lab.provision("nodeA", GONE)
        saved = lab.root / "backup-nodeA"
        shutil.copytree(lab.vm_dir("nodeA", GONE), saved)
        uuid = vm_uuid_of("nodeA", GONE)
        lab.run(
            "migrate",
            *("-e", f"ironclaw_vmid={GONE}", "-e", f"ironclaw_vm_uuid={uuid}"),
            *("-e", "ironclaw_source=nodeA", "-e", "ironclaw_target=nodeB"),
        )
        shutil.copytree(saved, lab.vm_dir("nodeA", GONE))

    nodes = [("nodeA", "tpm2", DEBIAN_PYTHON), ("nodeB", "tpm2", sys.executable)]
    with lab_from_template(tmp_path, ("moved", GONE), nodes, build) as lab:
        yield lab


def decommission(lab: Lab, vmid: int, *extra: str, **options):
    return lab.run("decommission", "-e", f"ironclaw_vmid={vmid}", *extra, **options)


def unseal_args(lab: Lab, node: str, vmid: int, uuid: str | None = None) -> list[str]:
    n = lab.nodes[node]
    args = [
        "state=verified",
        f"vmid={vmid}",
        f"vm_uuid={uuid or vm_uuid_of(node, vmid)}",
        f"backend={n.backend}",
        f"state_dir={n.state_dir}",
    ]
    if n.tcti:
        args.append(f"tcti={n.tcti}")
    return args


def test_unseal(lab: Lab, node: str, vmid: int, *, expect_fail: bool = False, uuid: str | None = None):
    """Test-unseal with whatever approval is installed, through the module (an ad-hoc play)."""
    play = lab.root / "unseal-check.yml"
    play.write_text(
        "- hosts: '{{ target }}'\n  gather_facts: false\n  tasks:\n    - ironclaw.sealed.ironclaw_seal: '{{ args }}'\n"
    )
    kv = dict(a.split("=", 1) for a in unseal_args(lab, node, vmid, uuid))
    kv["vmid"] = int(kv["vmid"])
    return lab.run(str(play), "-e", f"target={node}", "-e", json.dumps({"args": kv}), expect_fail=expect_fail)


test_unseal.__test__ = False  # a helper, not a test


def receipts(lab: Lab, node: str, vmid: int) -> list[dict]:
    store = lab.controller_dir / "store"
    root = load_chain(
        [dsse.parse_envelope(p.read_bytes(), p.name) for p in sorted((store / "trust").glob("root-*.json"))],
        datetime.now(UTC),
    )
    out = []
    for path in sorted((store / "receipts").glob(f"{vm_uuid_of(node, vmid)}-*.json")):
        out.append(verify_receipt(dsse.parse_envelope(path.read_bytes(), path.name), root))
    return out


@pytest.mark.parametrize("node", ["nodeA", "nodeB"])
def test_backup_copy_restored_after_decommission_does_not_unseal(lab: Lab, node: str):
    lab.provision_fleet(node, [GONE, NEIGHBOUR])
    backup = lab.root / "backup"
    shutil.copytree(lab.vm_dir(node, GONE), backup)

    decommission(lab, GONE)
    assert not lab.vm_dir(node, GONE).exists()
    assert not lab.policy_key(node, GONE).exists()

    shutil.copytree(backup, lab.vm_dir(node, GONE))  # the backup comes back
    refused = test_unseal(lab, node, GONE, expect_fail=True)
    assert "it was revoked" in refused.stdout  # the backup's approval is for the old epoch
    # ... and no new approval can ever be signed for it.
    again = lab.provision(node, GONE, expect_fail=True)
    assert "was decommissioned" in again.stdout

    # The neighbour on the same node still verifies and unseals (re-approved for the new epoch).
    lab.verify(node, NEIGHBOUR)
    test_unseal(lab, node, NEIGHBOUR)


def test_neighbours_are_re_approved_by_one_task_whatever_their_number(lab: Lab):
    """The VMs that stay on the node are re-approved in the task that destroys (one node call for all of them):
    a decommission beside three neighbours runs no more tasks than beside one."""
    lab.provision_fleet("nodeA", [GONE, NEIGHBOUR])
    beside_one = decommission(lab, GONE)
    lab.verify("nodeA", NEIGHBOUR)
    lab.provision_fleet("nodeA", [202, 203, 204])
    beside_three = decommission(lab, 202)
    for vmid in (NEIGHBOUR, 203, 204):
        lab.verify("nodeA", vmid)
    assert task_count(beside_three.stdout) == task_count(beside_one.stdout), (
        task_count(beside_one.stdout),
        task_count(beside_three.stdout),
    )


def test_rewrapped_neighbours_are_recorded_by_one_task_whatever_their_number(lab: Lab):
    """On a software node the epoch bump rewraps the keyslots of the VMs that stay (a new KEK): their new sealed
    state is recorded for all of them in one task and cached in one more, never a task per VM, so a decommission
    beside three neighbours runs no more tasks than beside one; each neighbour's next version verifies."""
    lab.provision_fleet("nodeB", [GONE, NEIGHBOUR])
    beside_one = decommission(lab, GONE)
    lab.verify("nodeB", NEIGHBOUR)
    lab.provision_fleet("nodeB", [202, 203, 204])
    beside_three = decommission(lab, 202)
    for vmid, versions in ((NEIGHBOUR, 3), (203, 2), (204, 2)):
        assert len(lab.store_chain("nodeB", vmid)) == versions, vmid
        lab.verify("nodeB", vmid)
    assert task_count(beside_three.stdout) == task_count(beside_one.stdout), (
        task_count(beside_one.stdout),
        task_count(beside_three.stdout),
    )


def test_rerun_changes_nothing_and_check_mode_destroys_nothing(lab: Lab):
    lab.provision("nodeB", GONE)
    before = lab.snapshot()
    checked = decommission(lab, GONE, check=True)
    assert lab.snapshot() == before, "check mode must not change anything"
    assert "nodeB would-destroy" in checked.stdout and "policy key would-destroy" in checked.stdout

    decommission(lab, GONE)
    after = lab.snapshot()
    rerun = decommission(lab, GONE)
    assert changed_tasks(rerun.stdout) == []
    assert lab.snapshot() == after
    assert len(receipts(lab, "nodeB", GONE)) == 1


def test_receipt_verifies_and_lists_every_node_of_the_history(moved_lab: Lab):
    lab = moved_lab
    uuid = vm_uuid_of("nodeA", GONE)
    decommission(lab, GONE)
    (receipt,) = receipts(lab, "nodeA", GONE)
    assert receipt["vm"]["vm_uuid"] == uuid and receipt["final"] is True
    assert [loc["node"] for loc in receipt["locations"]] == ["nodeA", "nodeB"]
    assert {loc["status"] for loc in receipt["locations"]} == {"destroyed"}
    for loc in receipt["locations"]:
        assert loc["evidence"]["epoch_after"] == loc["evidence"]["epoch_before"] + 1
    # The receipt names the tombstone that ends the chain by version and payload digest.
    end = dsse.parse_envelope(lab.store_chain("nodeA", GONE)[-1].read_bytes(), "tombstone")
    assert receipt["tombstone"] == {"version": 3, "payload_sha256": hashlib.sha256(end.payload).hexdigest()}
    assert [s["state"] for s in receipt["key_states"]] == ["active", "deactivated", "destroyed"]
    assert not lab.vm_dir("nodeA", GONE).exists() and not lab.vm_dir("nodeB", GONE).exists()


def test_vmid_reused_with_a_new_uuid_while_the_old_one_stays_tombstoned(lab: Lab):
    old = vm_uuid_of("nodeB", GONE)
    lab.provision("nodeB", GONE)
    decommission(lab, GONE)
    new = "0dd0beef-0000-4000-8000-000000000200"
    lab.run("provision", *lab.vm_args("nodeB", GONE, vm_uuid=new, secrets_file=lab.secrets_file))
    lab.run("verify", *lab.vm_args("nodeB", GONE, vm_uuid=new))
    refused = lab.run(
        "provision", *lab.vm_args("nodeB", GONE, vm_uuid=old, secrets_file=lab.secrets_file), expect_fail=True
    )
    assert "was decommissioned" in refused.stdout
    # Two VMs used VMID 200 now: decommission asks which one.
    ambiguous = decommission(lab, GONE, expect_fail=True)
    assert "was used by several VMs" in ambiguous.stdout


def test_unreachable_node_is_listed_and_a_rerun_finishes(moved_lab: Lab):
    lab = moved_lab
    inventory = json.loads(lab.inventory.read_text())
    hosts = inventory["all"]["children"]["ironclaw_nodes"]["hosts"]
    saved = dict(hosts["nodeB"])
    hosts["nodeB"].update(ansible_connection="ssh", ansible_host="127.0.0.1", ansible_port=1, ansible_user="nobody")
    lab.inventory.write_text(json.dumps(inventory))

    failed = decommission(lab, GONE, expect_fail=True)
    assert "nodeB could not be reached" in failed.stdout
    (partial,) = receipts(lab, "nodeA", GONE)
    assert partial["final"] is False and partial["unreachable"] == ["nodeB"]
    assert lab.vm_dir("nodeB", GONE).exists(), "nothing could be done on the node that was down"

    hosts["nodeB"] = saved
    lab.inventory.write_text(json.dumps(inventory))
    decommission(lab, GONE)
    first, final = receipts(lab, "nodeA", GONE)
    assert final["final"] is True and final["unreachable"] == []
    assert {loc["node"]: loc["status"] for loc in final["locations"]} == {
        "nodeA": "already-destroyed",
        "nodeB": "destroyed",
    }
    assert not lab.vm_dir("nodeB", GONE).exists()


def test_unknown_vmid_and_unreachable_store_destroy_nothing(lab: Lab):
    lab.provision("nodeB", GONE)
    before = lab.snapshot()
    unknown = decommission(lab, 4242, expect_fail=True)
    assert "VM 4242 is unknown to the store" in unknown.stdout
    # A store host over SSH on a loopback port nothing listens on: unreachable, whatever this machine's Pythons.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    unreachable = {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": closed_port}
    extra = lab.root / "unreachable-store.json"
    extra.write_text(json.dumps({"all": {"hosts": {"store-unreachable": unreachable}}}))
    nostore = decommission(lab, GONE, "-i", str(extra), "-e", "ironclaw_store_host=store-unreachable", expect_fail=True)
    assert "UNREACHABLE" in nostore.stdout and "store-unreachable" in nostore.stdout, nostore.stdout[-3000:]
    assert lab.snapshot() == before
