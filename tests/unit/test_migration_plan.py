"""The migration's rules (module_utils/_migration/plan.py), once Jinja in the migrate playbook and its roles: one
test per rule, each refusal asserted by type and by the cause it names."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from test_authority import NO_PCRS, NOW, UUID, A, B, _node_record, ledger

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    DecommissionedError,
    InputError,
    PlacementError,
    PolicyError,
    UnattestedTargetError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._migration import plan

HOSTS = {"node-a", "node-b", "localhost"}


def request(**variables):
    base = {"ironclaw_source": "node-a", "ironclaw_target": "node-b"}
    return plan.parse_request({**base, **variables}, HOSTS)


# -- the request ----------------------------------------------------------------------------------------------


def test_one_vm_by_vmid_with_its_uuid():
    got = request(ironclaw_vmid=300, ironclaw_vm_uuid=UUID.upper())
    assert got.vms == (plan.FleetVm(300, UUID),) and (got.source, got.target) == ("node-a", "node-b")


@pytest.mark.parametrize(
    "vms",
    ["300,301", [300, "301"], [{"vmid": 300}, {"vmid": "301", "vm_uuid": ""}], " 300 , 301 "],
    ids=["comma-string", "list", "entries", "spaces"],
)
def test_a_fleet_in_every_spelling_parses_to_the_same_vms(vms):
    assert [vm.vmid for vm in request(ironclaw_vms=vms).vms] == [300, 301]


@pytest.mark.parametrize(
    ("variables", "cause"),
    [
        ({"ironclaw_vmid": 300, "ironclaw_vms": [301]}, "not both"),
        ({"ironclaw_vms": [300], "ironclaw_vm_uuid": UUID}, "give each VM's uuid in its entry"),
        ({}, "Give the VM (or VMs) and both nodes"),
        ({"ironclaw_vms": []}, "ironclaw_vms is empty"),
        ({"ironclaw_vms": ""}, "ironclaw_vms is empty"),
        ({"ironclaw_vms": [300, "30x"]}, "Not a VMID (100 to 999999999): 30x."),
        ({"ironclaw_vms": [99]}, "Not a VMID"),
        ({"ironclaw_vms": [True]}, "Not a VMID"),
        ({"ironclaw_vms": [300, "300"]}, "listed twice"),
        ({"ironclaw_vms": [{"vmid": 300, "uuid": UUID}]}, "unknown key(s) uuid"),
        ({"ironclaw_vms": {"300": 1}}, "unknown key(s) 300"),
        ({"ironclaw_vms": 3.5}, "must be a list"),
        ({"ironclaw_vms": [{"vmid": 300, "vm_uuid": "not-a-uuid"}]}, "uuid"),
    ],
)
def test_a_bad_fleet_is_refused_naming_the_cause(variables, cause):
    with pytest.raises(InputError, match=None) as err:
        request(**variables)
    assert cause in str(err.value)


def test_unknown_nodes_and_a_move_onto_itself_are_refused():
    with pytest.raises(InputError, match="Unknown target node-c: it is not in the inventory"):
        request(ironclaw_vmid=300, ironclaw_target="node-c")
    with pytest.raises(InputError, match="Unknown source node-x"):
        request(ironclaw_vmid=300, ironclaw_source="node-x")
    with pytest.raises(PlacementError, match="cannot migrate to the node it is on"):
        request(ironclaw_vmid=300, ironclaw_target="node-a")


def test_window_end_reads_no_clock_and_refuses_a_non_window():
    assert plan.window_end(NOW, 60) == NOW + timedelta(hours=1)
    for bad in (0, -5, "60", True, None):
        with pytest.raises(InputError, match="ironclaw_migration_window_minutes"):
            plan.window_end(NOW, bad)


# -- the VM's identity ----------------------------------------------------------------------------------------

PVE_VM = {"exists": True, "node": "pve-a", "uuid": UUID.upper(), "ctime": 1718000000, "status": "stopped"}


def test_identity_from_proxmox_is_the_authority():
    got = plan.settle_identity(
        plan.FleetVm(300, ""), pve=True, proxmox={"vm": PVE_VM, "pve_node": "pve-a"}, host="node-a", nodes=["pve-a"]
    )
    assert got == {
        "vmid": 300,
        "uuid": UUID,
        "ctime": 1718000000,
        "node": "pve-a",
        "source": "proxmox",
        "status": "stopped",
    }


@pytest.mark.parametrize(
    ("vm", "given", "cause"),
    [
        ({"exists": False}, "", "does not exist in the Proxmox cluster"),
        ({**PVE_VM, "node": "pve-z"}, "", "is on node pve-z, not on node pve-a or pve-b"),
        (PVE_VM, "7c0a3d2f-4b5e-4f60-9b8c-2d3e4f5a6b7c", "VMIDs are reused"),
    ],
    ids=["missing", "elsewhere", "reused-vmid"],
)
def test_identity_refusals_name_the_cause(vm, given, cause):
    with pytest.raises(PlacementError) as err:
        plan.settle_identity(
            plan.FleetVm(300, given),
            pve=True,
            proxmox={"vm": vm, "pve_node": "pve-a"},
            host="node-a",
            nodes=["pve-a", "pve-b"],
        )
    assert cause in str(err.value)


def test_identity_without_proxmox_needs_the_uuid():
    with pytest.raises(InputError, match="give the uuid of VM 300"):
        plan.settle_identity(plan.FleetVm(300, ""), pve=False, proxmox=None, host="node-a", nodes=[])
    got = plan.settle_identity(plan.FleetVm(300, UUID), pve=False, proxmox=None, host="node-a", nodes=[])
    assert (got["uuid"], got["node"], got["source"]) == (UUID, "node-a", "variables")


# -- where the migration stands -------------------------------------------------------------------------------

MOVED = {"source": A.name, "target": B.name, "not_after": "2030-06-01T13:00:00Z"}


def status(led, keyslot=False, bundle=False, source=A.name, target=B.name):
    return plan.status_of(led, 300, source, target, target_keyslot=keyslot, target_bundle=bundle)


def test_status_pending_imported_recorded():
    on_a = ledger((A, NO_PCRS))
    assert status(on_a) == "pending"
    assert status(on_a, keyslot=True) == "pending", "a keyslot alone on the target may be a stale copy"
    assert status(on_a, keyslot=True, bundle=True) == "imported"
    assert status(ledger((A, NO_PCRS), (B, NO_PCRS, {"migration": MOVED}))) == "recorded"


def test_status_refuses_a_vm_the_store_places_elsewhere():
    with pytest.raises(PlacementError, match="is on node node-a according to the store .*not on the source node-b"):
        status(ledger((A, NO_PCRS)), source=B.name, target=A.name)
    # On the target, but not by a move from this source: not "recorded".
    with pytest.raises(PlacementError, match="is on node node-b"):
        status(ledger((A, NO_PCRS), (B, NO_PCRS)), source=A.name, target="node-c")


def test_status_refuses_an_unprovisioned_and_a_decommissioned_vm():
    from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.ledger import VmLedger

    with pytest.raises(PlacementError, match="provision it first"):
        status(VmLedger(UUID, []))
    with pytest.raises(DecommissionedError, match="was decommissioned"):
        status(ledger((A, NO_PCRS), (A, NO_PCRS, {"state": "destroyed"})))


def test_recorded_version_before_revocation():
    assert plan.recorded_version(ledger((A, NO_PCRS), (B, NO_PCRS, {"migration": MOVED})), 300, A.name, B.name) == 2
    with pytest.raises(PlacementError, match="does not record VM 300 on node-b yet"):
        plan.recorded_version(ledger((A, NO_PCRS)), 300, A.name, B.name)


# -- the target -------------------------------------------------------------------------------------------------

FACTS = {"backend": "tpm2", "provisioned": True, "srk_name": B.id}


def test_target_must_be_enrolled():
    with pytest.raises(PlacementError, match="is not enrolled"):
        plan.check_target(None, FACTS, target="node-b", source_backend="tpm2")


def test_a_backend_mismatch_is_named_as_such_not_as_a_replaced_tpm():
    """A software source and a tpm2 target: the cause is two backends (once blamed on a replaced TPM)."""
    record = _node_record("node-b", B.id)
    with pytest.raises(PlacementError) as err:
        plan.check_target(record, FACTS, target="node-b", source_backend="software")
    assert "enrolled with the tpm2 backend, the source uses software" in str(err.value)
    assert "replaced" not in str(err.value)
    with pytest.raises(PlacementError, match="inventory settings"):
        plan.check_target(record, {**FACTS, "backend": "software"}, target="node-b", source_backend="tpm2")


def test_target_with_another_srk_is_refused():
    record = _node_record("node-b", B.id)
    plan.check_target(record, FACTS, target="node-b", source_backend="tpm2")
    with pytest.raises(PlacementError, match="TPM cleared or replaced"):
        plan.check_target(record, {**FACTS, "srk_name": A.id}, target="node-b", source_backend="tpm2")


def _with_trust(record, trust):
    """The record as enrolled with another trust mode (None: enrolled before attestation, format 2)."""
    evidence = None if trust is None else {**record.attestation, "trust": trust, "ek_chain": []}
    return dataclasses.replace(record, attestation=evidence)


@pytest.mark.parametrize("trust", ["tofu", None], ids=["tofu", "pre-attestation"])
def test_tofu_target_refused_naming_the_node_and_the_flag(trust):
    """A target nothing proves to be a TPM would receive a VM's root key: refused unless allowed explicitly."""
    record = _with_trust(_node_record("node-b", B.id), trust)
    with pytest.raises(UnattestedTargetError) as err:
        plan.check_target(record, FACTS, target="node-b", source_backend="tpm2")
    assert "node-b" in str(err.value) and "ironclaw_allow_tofu_targets: true" in str(err.value)
    plan.check_target(record, FACTS, target="node-b", source_backend="tpm2", allow_tofu=True)


@pytest.mark.parametrize("trust", ["ca", "pin"])
def test_attested_target_is_accepted(trust):
    record = _node_record("node-b", B.id)
    if trust == "pin":
        record = _with_trust(record, "pin")
    plan.check_target(record, FACTS, target="node-b", source_backend="tpm2")


def test_software_target_needs_no_attestation():
    """Software nodes have no TPM (test and development only): they are never attested, and move among themselves."""
    record = _node_record("node-b", B.id, backend="software")
    plan.check_target(record, {**FACTS, "backend": "software"}, target="node-b", source_backend="software")


# -- before anything is signed --------------------------------------------------------------------------------


def test_manifest_must_outlive_the_window():
    newest = ledger((A, NO_PCRS)).newest  # expires NOW + 30 days
    plan.check_window(300, newest, NOW + timedelta(days=29))
    with pytest.raises(PolicyError, match="before the migration's not_after"):
        plan.check_window(300, newest, NOW + timedelta(days=30))


def test_a_running_vm_is_refused_unless_it_may_be_stopped():
    running = {"vmid": 300, "node": "pve-a", "status": "running"}
    with pytest.raises(PolicyError, match="is running on node pve-a"):
        plan.check_running(running, pve=True, stop_vm=False)
    plan.check_running(running, pve=True, stop_vm=True)
    plan.check_running(running, pve=False, stop_vm=False)


# -- a fleet, as provision takes it (parse_fleet, shared with the migration's request) ----------------------------


@pytest.mark.parametrize(
    ("vmid", "vm_uuid", "vms", "expected"),
    [
        (300, UUID, None, [plan.FleetVm(300, UUID)]),
        (None, "", "300,301", [plan.FleetVm(300, ""), plan.FleetVm(301, "")]),
        (None, "", [{"vmid": 300, "vm_uuid": UUID}, 301], [plan.FleetVm(300, UUID), plan.FleetVm(301, "")]),
    ],
    ids=["one-vm", "comma-string", "entries"],
)
def test_provision_fleet_takes_the_forms_migrate_takes(vmid, vm_uuid, vms, expected):
    assert list(plan.parse_fleet(vmid, vm_uuid, vms)) == expected


@pytest.mark.parametrize(
    ("vmid", "vm_uuid", "vms", "cause"),
    [
        (None, "", [300, 300], "listed twice"),
        (300, "", [301], "not both"),
        (None, UUID, [300], "give each VM's uuid in its entry"),
        (None, "", None, "Give the VM (or VMs)"),
        (None, "", [], "ironclaw_vms is empty"),
        (None, "", [{"vmid": 300, "vm_uuid": "../../etc"}], "uuid"),
    ],
    ids=["twice", "both", "uuid-outside", "none", "empty", "bad-uuid"],
)
def test_a_malformed_fleet_is_refused_before_any_step(vmid, vm_uuid, vms, cause):
    """A VM listed twice would take its lock twice and be sealed twice in one run; a uuid outside its entry would
    be given to every VM: each is refused, naming the cause."""
    with pytest.raises(InputError) as refused:
        plan.parse_fleet(vmid, vm_uuid, vms)
    assert cause in str(refused.value)
