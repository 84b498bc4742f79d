"""What provisioning may act on (module_utils/_authority/provision.py): the VM's identity and the secrets asked for.

Each refusal is asserted by type and message; these rules used to be Jinja in roles/seal/tasks.
"""

from __future__ import annotations

import types

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._authority import provision
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.ledger import NodeView
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    DecommissionedError,
    InputError,
    PlacementError,
    ProxmoxError,
)

UUID = "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"
OTHER_UUID = "7c0a3d2f-4b5e-4f60-9b8c-2d3e4f5a6b7c"


def pve(*, exists=True, node="pve1", uuid=UUID, ctime=1700000000, status="stopped", asked_on="pve1") -> dict:
    return {
        "vm": {"exists": exists, "node": node, "uuid": uuid, "ctime": ctime, "status": status},
        "pve_node": asked_on,
    }


def test_identity_is_proxmoxs_when_asked():
    identity = provision.vm_identity("100", node_name="pve1", pve=pve(uuid=UUID.upper()))
    assert identity == {
        "vmid": 100,
        "uuid": UUID,
        "ctime": 1700000000,
        "node": "pve1",
        "source": "proxmox",
        "status": "stopped",
    }


def test_identity_of_a_vm_proxmox_does_not_know_is_refused():
    with pytest.raises(ProxmoxError, match="VM 100 does not exist in the Proxmox cluster \\(asked on node pve1"):
        provision.vm_identity(100, node_name="pve1", pve=pve(exists=False))


def test_identity_of_a_vm_on_another_node_is_refused():
    with pytest.raises(ProxmoxError, match="VM 100 is on node pve2, not on node pve1 "):
        provision.vm_identity(100, node_name="pve1", pve=pve(node="pve2"))


def test_identity_on_a_node_the_caller_accepts_is_settled():
    identity = provision.vm_identity(100, node_name="pve1", pve=pve(node="pve2"), vm_nodes=["pve2"])
    assert identity["node"] == "pve2"


def test_reused_vmid_with_another_uuid_is_refused():
    with pytest.raises(ProxmoxError, match=f"has uuid {UUID} in Proxmox, not {OTHER_UUID} as given: VMIDs are reused"):
        provision.vm_identity(100, node_name="pve1", uuid=OTHER_UUID, pve=pve())


def test_vm_re_created_under_the_same_vmid_is_refused():
    with pytest.raises(ProxmoxError, match="was created at 1700000000 according to Proxmox, not at 1600000000"):
        provision.vm_identity(100, node_name="pve1", uuid=UUID, ctime=1600000000, pve=pve())


def test_identity_from_variables_needs_a_uuid():
    with pytest.raises(InputError, match="With ironclaw_pve=false the VM's identity comes from variables"):
        provision.vm_identity(100, node_name="nodeA", uuid="")


def test_identity_from_variables_is_the_one_given():
    identity = provision.vm_identity(100, node_name="nodeA", uuid=UUID, ctime="5")
    assert identity == {
        "vmid": 100,
        "uuid": UUID,
        "ctime": 5,
        "node": "nodeA",
        "source": "variables",
        "status": "unknown",
    }


@pytest.mark.parametrize("vmid", [99, "abc", True])
def test_identity_of_a_malformed_vmid_is_refused(vmid):
    with pytest.raises(InputError, match="VMID must be"):
        provision.vm_identity(vmid, node_name="nodeA", uuid=UUID)


def test_identity_of_a_malformed_uuid_is_refused():
    with pytest.raises(InputError, match="VM uuid must be in the form"):
        provision.vm_identity(100, node_name="nodeA", uuid="not-a-uuid")


@pytest.mark.parametrize(
    "secrets",
    [[], None, [{"src": "/x"}], [{"name": "a", "src": "/x", "content": "y"}], ["a"]],
    ids=["empty", "none", "no-name", "src-and-content", "not-a-dict"],
)
def test_malformed_secret_request_is_refused(secrets):
    with pytest.raises(InputError, match="a non-empty list of \\{name, src\\} or \\{name, content\\}"):
        provision.secret_request(secrets, lambda _path: True)


def test_secret_files_missing_on_the_controller_are_named(tmp_path):
    there = tmp_path / "there"
    there.write_bytes(b"x")
    asked = [
        {"name": "a", "src": str(there)},
        {"name": "b", "src": str(tmp_path / "gone")},
        {"name": "c", "content": "inline"},
        {"name": "d", "src": str(tmp_path / "also-gone"), "content": None},
    ]
    with pytest.raises(InputError) as refused:
        provision.secret_request(asked, lambda path: path == str(there))
    assert str(refused.value) == (
        f"Secret file(s) not found on the controller: {tmp_path / 'gone'}, {tmp_path / 'also-gone'}."
    )


def test_secret_request_with_every_file_present_is_kept():
    asked = [{"name": "a", "src": "/x", "content": None}, {"name": "c", "content": "inline", "src": None}]
    assert provision.secret_request(asked, lambda _path: True) == asked


def test_re_approval_records_nothing_for_a_vm_placed_on_another_node():
    elsewhere = NodeView("node-b", "000b" + "bb" * 32)
    assert not provision.record_here(elsewhere, "node-a", only_if_here=True)


@pytest.mark.parametrize(
    ("placement", "only_if_here"),
    [(NodeView("node-a", "000b" + "aa" * 32), True), (None, True), (NodeView("node-b", "000b" + "bb" * 32), False)],
    ids=["placed-here", "no-chain-yet", "not-a-re-approval"],
)
def test_a_version_is_recorded_here_otherwise(placement, only_if_here):
    assert provision.record_here(placement, "node-a", only_if_here=only_if_here)


def _ledger(newest):
    return types.SimpleNamespace(vm_uuid="6f1c2a4e-9b7d-4c1a-8e2f-000000000100", newest=newest)


def _manifest(node: str, destroyed: bool = False):
    return types.SimpleNamespace(node=types.SimpleNamespace(name=node), destroyed=destroyed)


def test_placed_here_accepts_only_the_node_the_newest_active_manifest_names():
    provision.placed_here(_ledger(_manifest("pve1")), 100, "pve1")
    with pytest.raises(PlacementError, match="The store records VM 100 on pve1, not on pve2"):
        provision.placed_here(_ledger(_manifest("pve1")), 100, "pve2")
    with pytest.raises(PlacementError, match="no manifest for VM 100"):
        provision.placed_here(_ledger(None), 100, "pve1")
    with pytest.raises(DecommissionedError, match="VM 100 .* was decommissioned"):
        provision.placed_here(_ledger(_manifest("pve1", destroyed=True)), 100, "pve1")
