"""Decommission on Proxmox-like nodes: a running VM is refused before anything is destroyed; with the
opt-ins it is shut down and deleted, and its neighbour keeps working.

A lab instance of its own (2 nodes) so the other lab tests' state is not touched.
"""

from __future__ import annotations

import pytest
from playrig import enrolled_lab

pytestmark = pytest.mark.lab

INSTANCE = ("iclabk", "10.213.6.0/24")
GONE, NEIGHBOUR = 9400, 9401
UUIDS = {GONE: "6f1c2a4e-9b7d-4c1a-8e2f-000000009400", NEIGHBOUR: "6f1c2a4e-9b7d-4c1a-8e2f-000000009401"}


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    vms = {vmid: (1, UUIDS[vmid]) for vmid in (GONE, NEIGHBOUR)}
    with enrolled_lab(INSTANCE, 2, vms, tmp_path_factory.mktemp("decommission")) as rig:
        for vmid in (GONE, NEIGHBOUR):
            rig.provision("pve1", vmid)
        yield rig


def test_running_vm_is_refused_then_stopped_and_deleted_on_request(rig):
    rig.lab.qm(1, "start", str(GONE))
    assert "running" in rig.lab.qm(1, "status", str(GONE)).stdout
    before = rig.snapshot()
    out = rig.run("decommission", "-e", f"ironclaw_vmid={GONE}", fail=True)
    assert f"VM {GONE} is running on node pve1: nothing was destroyed" in out
    assert rig.snapshot() == before, "a refused decommission must not change anything"

    out = rig.run(
        "decommission", "-e", f"ironclaw_vmid={GONE}", "-e", "destroy_stop_vm=true", "-e", "destroy_delete_vm=true"
    )
    assert "pve1 destroyed" in out
    assert rig.lab.ssh(1, f"test -e /var/lib/ironclaw/{GONE} && echo present || echo gone").stdout.strip() == "gone"
    config = rig.lab.qm(1, "config", str(GONE), check=False)
    assert config.returncode != 0, "the VM itself was deleted (opt-in)"
    # The neighbour on the same node was re-approved for the new epoch and still verifies.
    assert f"VM {NEIGHBOUR} on pve1: manifest v1" in rig.verify("pve1", NEIGHBOUR)
