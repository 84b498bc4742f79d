"""VM identity from Proxmox (ironclaw_pve: true) in the roles, over SSH against lab nodes.

The provision and verify playbooks take a VM's uuid and creation time from
Proxmox on its node; a uuid given as well must be Proxmox's ("VMIDs are
reused"), and a VM that is not on the node is refused, naming node and VMID.
A refusal writes nothing: not on the node, not on the controller.

A lab instance of its own (2 nodes), so the TPMs and state directories of the
session lab stay as the other lab tests expect them.
"""

from __future__ import annotations

import pytest
from labrig import LabInstance
from playrig import enrolled_lab

pytestmark = pytest.mark.lab

INSTANCE = ("iclabi", "10.213.4.0/24")
# pve1 holds the first two VMs, pve2 the third; no VM has the fourth VMID.
SEALED, FRESH, ELSEWHERE, MISSING = 9300, 9301, 9302, 9399
UUIDS = {
    SEALED: "6f1c2a4e-9b7d-4c1a-8e2f-000000009300",
    FRESH: "6f1c2a4e-9b7d-4c1a-8e2f-000000009301",
    ELSEWHERE: "6f1c2a4e-9b7d-4c1a-8e2f-000000009302",
}
OTHER_UUID = "6f1c2a4e-9b7d-4c1a-8e2f-0000000093ff"


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """Two enrolled lab nodes, VMs in the simulator, one VM provisioned with its identity from Proxmox."""
    vms = {vmid: (node, UUIDS[vmid]) for node, vmid in ((1, SEALED), (1, FRESH), (2, ELSEWHERE))}
    with enrolled_lab(INSTANCE, 2, vms, tmp_path_factory.mktemp("identity")) as rig:
        rig.provision("pve1", SEALED)
        yield rig


def ctime_of(lab: LabInstance, node: int, vmid: int) -> int:
    meta = [line for line in lab.qm(node, "config", str(vmid)).stdout.splitlines() if line.startswith("meta: ")]
    return int(meta[0].split("ctime=")[1].split(",")[0])


def test_provision_and_verify_take_the_identity_from_proxmox(rig):
    (manifest,) = rig.manifests(UUIDS[SEALED])
    assert manifest["subject"] == {
        "vmid": SEALED,
        "vm_uuid": UUIDS[SEALED],
        "vm_ctime": ctime_of(rig.lab, 1, SEALED),
        "cluster": "lab",
    }
    assert rig.lab.ssh(1, f"ls /var/lib/ironclaw/{SEALED}").stdout.split() == [
        "approval.json",
        "keyslot.json",
        "manifest.json",
        "master-key.sealed",
    ]
    out = rig.verify("pve1", SEALED, "-e", f"ironclaw_vm_uuid={UUIDS[SEALED]}")
    assert f"VM {SEALED} on pve1: manifest v1, 1 secret(s) verified (master-key)" in out


@pytest.mark.parametrize(
    ("given", "refusal"),
    [
        (
            ["-e", f"ironclaw_vm_uuid={OTHER_UUID}"],
            f"VM {FRESH} on node pve1 has uuid {UUIDS[FRESH]} in Proxmox, not {OTHER_UUID} as given: VMIDs are reused",
        ),
        # The same uuid in capitals is the same VM: only the creation time is wrong here.
        (
            ["-e", f"ironclaw_vm_uuid={UUIDS[FRESH].upper()}", "-e", "ironclaw_vm_ctime=1000000000"],
            f"VM {FRESH} on node pve1 was created at",
        ),
    ],
    ids=["uuid", "ctime"],
)
def test_an_identity_other_than_proxmoxs_is_refused_with_nothing_written(rig, given, refusal):
    before = rig.snapshot()
    out = rig.provision("pve1", FRESH, *given, fail=True)
    assert refusal in out
    assert "Nothing was changed." in out
    assert rig.snapshot() == before
    assert rig.manifests(UUIDS[FRESH]) == []


def test_verify_refuses_a_uuid_other_than_proxmoxs(rig):
    out = rig.verify("pve1", SEALED, "-e", f"ironclaw_vm_uuid={OTHER_UUID}", fail=True)
    assert f"VM {SEALED} on node pve1 has uuid {UUIDS[SEALED]} in Proxmox, not {OTHER_UUID} as given" in out


@pytest.mark.parametrize(
    ("node", "vmid", "refusal"),
    [
        ("pve1", MISSING, f"VM {MISSING} does not exist in the Proxmox cluster (asked on node pve1"),
        ("pve1", ELSEWHERE, f"VM {ELSEWHERE} is on node pve2, not on node pve1"),
    ],
    ids=["nowhere", "on-another-node"],
)
def test_a_vm_missing_on_the_node_is_refused_with_nothing_written(rig, node, vmid, refusal):
    before = rig.snapshot()
    out = rig.provision(node, vmid, fail=True)
    assert refusal in out
    assert rig.snapshot() == before
    out = rig.verify(node, vmid, fail=True)
    assert refusal in out
