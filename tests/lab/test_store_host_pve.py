"""The store on a node reached over SSH (ironclaw_store_host): the store steps of provision and migrate run as
modules there, not in the controller's process (plugin_utils/store_host runs them in process only when the store
host is the controller itself). Node records and manifests land on that node; the controller keeps no store.

A lab instance of its own (3 nodes): pve3 holds the store, VM 100 is provisioned on pve1 and moved to pve2.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from labrig import LabInstance, lab_unavailable
from playrig import ANSIBLE_PLAYBOOK, Rig

pytestmark = pytest.mark.lab

INSTANCE = ("iclabs", "10.213.9.0/24")
VMID = 100
VM_UUID = "6f1c2a4e-9b7d-4c1a-8e2f-000000000100"
# pve3's private /root (the lab binds it from the node's own directory): the controller's /root/ironclaw-store
# staying absent shows the store steps ran on pve3, not in the controller's process.
STORE_DIR = "/root/ironclaw-store"
ON_STORE = ("-e", "ironclaw_store_host=pve3", "-e", f"ironclaw_store_dir={STORE_DIR}")


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip(f"{ANSIBLE_PLAYBOOK} not found: run the tests with the venv's python (make bootstrap)")
    if Path(STORE_DIR).exists():
        pytest.fail(f"{STORE_DIR} exists on this machine: remove it, the test reads its absence")
    lab = LabInstance(*INSTANCE)
    lab.cli("down")
    lab.cli("up", "3")
    try:
        lab.qm(1, "create", str(VMID), "--smbios1", f"uuid={VM_UUID}")
        yield Rig(lab, tmp_path_factory.mktemp("store-host"))
    finally:
        lab.cli("down")


def store_manifests(rig: Rig) -> list[dict]:
    """The payloads of the VM's manifests in the store on pve3, oldest first."""
    listing = rig.lab.ssh(3, f"cd {STORE_DIR}/vms/{VM_UUID} && for f in manifest-*.json; do cat $f; echo; done").stdout
    envelopes = [json.loads(line) for line in listing.splitlines() if line.strip()]
    return [json.loads(base64.b64decode(envelope["payload"])) for envelope in envelopes]


def test_a_store_on_a_node_serves_provision_and_migration_over_ssh(rig):
    rig.run("init", *ON_STORE)
    rig.run("enroll", *ON_STORE)
    rig.provision("pve1", VMID, *ON_STORE)
    nodes = ("-e", "ironclaw_source=pve1", "-e", "ironclaw_target=pve2")
    out = rig.run("migrate", "-e", f"ironclaw_vmid={VMID}", *nodes, *ON_STORE)
    assert f"VM {VMID} migrated: its sealed state is on pve2 (manifest v2)" in out
    records = rig.lab.ssh(3, f"ls {STORE_DIR}/nodes").stdout.split()
    assert records == ["pve1.json", "pve2.json", "pve3.json"]
    manifests = store_manifests(rig)
    assert [m["version"] for m in manifests] == [1, 2]
    assert manifests[-1]["node"]["name"] == "pve2"
    assert not (rig.controller_dir / "store" / "vms").exists(), "the controller keeps no copy of the store"
    assert not Path(STORE_DIR).exists(), "the store steps ran on pve3, not in the controller's process"
    assert rig.unsealed("pve2", VMID, VM_UUID) == {"master-key": (rig.root / "master-key.bin").read_bytes()}
