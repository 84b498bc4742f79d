"""Destruction on a node, the policy-key tombstone and receipts, against real swtpm and real files."""

from __future__ import annotations

import dataclasses
import os
import shutil
from datetime import UTC, datetime, timedelta

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    InputError,
    PolicyError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import Ed25519PrivateKey
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy import receipt as rc
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.node import (
    destroy_many_on_node,
    destroy_on_node,
    read_record,
    remove_vm_files,
    vm_files,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import load_root, new_root
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import PolicyKeyStore
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir
from rig.policy import approve

NOW = "2030-01-01T00:00:00Z"
GONE = (200, "22222222-2222-4222-8222-222222222222")
KEPT = (201, "33333333-3333-4333-8333-333333333333")
ALSO_GONE = (202, "44444444-4444-4444-8444-444444444444")


def seal(backend, state_dir, keys, vm):
    keys.create(*vm)
    facts = backend.facts()
    approval = approve(keys, *vm, facts)
    engine.seal(
        backend,
        VmDir(state_dir, *vm),
        [engine.Secret("a", b"alpha"), engine.Secret("b", os.urandom(100))],
        migratable=True,
        pcrs=None,
        policy_key_public=keys.public(*vm)[0],
        approval=approval,
        check_mode=False,
    )


@pytest.fixture(params=["tpm2", "software"])
def node(request, tmp_path):
    if request.param == "tpm2":
        swtpm = request.getfixturevalue("swtpm")
        backend = open_backend("tpm2", tcti=swtpm.tcti, state_dir=str(tmp_path / "state"))
    else:
        backend = open_backend("software", tcti=None, state_dir=str(tmp_path / "state"))
    backend.provision()
    keys = PolicyKeyStore(str(tmp_path / "controller"))
    state_dir = str(tmp_path / "state")
    seal(backend, state_dir, keys, GONE)
    seal(backend, state_dir, keys, KEPT)
    yield backend, state_dir, keys
    backend.close()


def test_backup_restored_after_destruction_does_not_unseal(node, tmp_path):
    backend, state_dir, keys = node
    vm = VmDir(state_dir, *GONE)
    backup = tmp_path / "backup"
    shutil.copytree(vm.path, backup)
    done = destroy_on_node(backend, state_dir, *GONE, now=NOW, check_mode=False)
    assert done["status"] == "destroyed" and not os.path.exists(vm.path)
    assert done["evidence"]["epoch_after"] == done["evidence"]["epoch_before"] + 1
    assert sorted(done["evidence"]["files_removed"]) == ["a.sealed", "approval.json", "b.sealed", "keyslot.json"]
    assert [s["vmid"] for s in done["survivors"]] == [KEPT[0]]
    shutil.copytree(backup, vm.path)
    with pytest.raises(PolicyError, match="it was revoked"):
        engine.verify(backend, vm)
    if backend.backend == "software":
        # The KEK the copy was wrapped under is gone: even a fresh approval cannot open it.
        facts = backend.facts()
        fresh = approve(keys, *GONE, facts)
        with pytest.raises(Exception, match="KEK version 1 is gone"):
            engine.verify(backend, vm, fresh)


def test_neighbour_works_again_with_a_new_approval(node):
    backend, state_dir, keys = node
    destroy_on_node(backend, state_dir, *GONE, now=NOW, check_mode=False)
    kept = VmDir(state_dir, *KEPT)
    with pytest.raises(PolicyError, match="it was revoked"):
        engine.verify(backend, kept)
    facts = backend.facts()
    fresh = approve(keys, *KEPT, facts)
    engine.install_approval(backend, kept, fresh, check_mode=False)
    assert engine.verify(backend, kept)["failed"] == []


def test_check_mode_and_rerun_change_nothing(node):
    backend, state_dir, _keys = node
    epoch = backend.epoch()
    planned = destroy_on_node(backend, state_dir, *GONE, now=NOW, check_mode=True)
    assert planned["status"] == "would-destroy" and backend.epoch() == epoch
    assert os.path.exists(VmDir(state_dir, *GONE).keyslot_path)
    destroy_on_node(backend, state_dir, *GONE, now=NOW, check_mode=False)
    again = destroy_on_node(backend, state_dir, *GONE, now=NOW, check_mode=False)
    assert again["status"] == "already-destroyed" and again["changed"] is False
    assert backend.epoch() == epoch + 1
    assert read_record(state_dir, GONE[1])["epoch_after"] == epoch + 1


def test_symlink_in_the_vm_folder_is_refused_and_nothing_destroyed(node, tmp_path):
    backend, state_dir, _keys = node
    victim = tmp_path / "elsewhere"
    victim.write_text("keep me")
    os.symlink(victim, os.path.join(VmDir(state_dir, *GONE).path, "c.sealed"))
    epoch = backend.epoch()
    with pytest.raises(InputError, match="not a regular file"):
        destroy_on_node(backend, state_dir, *GONE, now=NOW, check_mode=False)
    assert victim.read_text() == "keep me" and backend.epoch() == epoch


def test_another_vms_state_under_a_reused_vmid_is_not_destroyed(node):
    backend, state_dir, _keys = node
    with pytest.raises(InputError, match="refusing to destroy another VM's state"):
        destroy_on_node(backend, state_dir, GONE[0], "99999999-9999-4999-8999-999999999999", now=NOW, check_mode=False)
    assert os.path.exists(VmDir(state_dir, *GONE).keyslot_path)


def test_fleet_revoked_at_once_none_of_its_saved_copies_unseals(node, tmp_path):
    backend, state_dir, keys = node
    seal(backend, state_dir, keys, ALSO_GONE)
    for vm in (GONE, ALSO_GONE):
        shutil.copytree(VmDir(state_dir, *vm).path, tmp_path / f"backup-{vm[0]}")
    epoch = backend.epoch()
    done = destroy_many_on_node(backend, state_dir, [GONE, ALSO_GONE], now=NOW, check_mode=False)
    assert done["status"] == "destroyed" and backend.epoch() == epoch + 1
    assert [r["vmid"] for r in done["results"]] == [GONE[0], ALSO_GONE[0]]
    assert {read_record(state_dir, vm[1])["epoch_after"] for vm in (GONE, ALSO_GONE)} == {epoch + 1}
    assert [s["vmid"] for s in done["survivors"]] == [KEPT[0]]
    for vm in (GONE, ALSO_GONE):
        restored = VmDir(state_dir, *vm)
        shutil.copytree(tmp_path / f"backup-{vm[0]}", restored.path)
        with pytest.raises(PolicyError, match="it was revoked"):
            engine.verify(backend, restored)


def test_fleet_with_one_bad_vm_destroys_nothing(node, tmp_path):
    backend, state_dir, keys = node
    seal(backend, state_dir, keys, ALSO_GONE)
    victim = tmp_path / "elsewhere"
    victim.write_text("keep me")
    os.symlink(victim, os.path.join(VmDir(state_dir, *ALSO_GONE).path, "c.sealed"))
    epoch = backend.epoch()
    with pytest.raises(InputError, match="not a regular file"):
        destroy_many_on_node(backend, state_dir, [GONE, ALSO_GONE], now=NOW, check_mode=False)
    assert backend.epoch() == epoch and victim.read_text() == "keep me"
    assert os.path.exists(VmDir(state_dir, *GONE).keyslot_path)
    with pytest.raises(InputError, match="listed twice"):
        destroy_many_on_node(backend, state_dir, [GONE, KEPT, GONE], now=NOW, check_mode=False)
    assert os.path.exists(VmDir(state_dir, *KEPT).keyslot_path) and backend.epoch() == epoch


def test_fleet_cut_before_its_epoch_bump_is_revoked_by_the_rerun(node):
    backend, state_dir, keys = node
    seal(backend, state_dir, keys, ALSO_GONE)
    destroy_on_node(backend, state_dir, *GONE, now=NOW, check_mode=False)
    epoch = backend.epoch()
    # A run killed after removing ALSO_GONE's files, before its bump: no record, no bump yet.
    cut = VmDir(state_dir, *ALSO_GONE)
    remove_vm_files(cut, vm_files(cut))
    planned = destroy_many_on_node(backend, state_dir, [GONE, ALSO_GONE], now=NOW, check_mode=True)
    assert [r["status"] for r in planned["results"]] == ["already-destroyed", "would-destroy"]
    assert backend.epoch() == epoch
    again = destroy_many_on_node(backend, state_dir, [GONE, ALSO_GONE], now=NOW, check_mode=False)
    assert again["changed"] and backend.epoch() == epoch + 1
    assert read_record(state_dir, ALSO_GONE[1])["epoch_after"] == epoch + 1
    assert read_record(state_dir, GONE[1])["epoch_after"] == epoch
    last = destroy_many_on_node(backend, state_dir, [GONE, ALSO_GONE], now=NOW, check_mode=False)
    assert not last["changed"] and last["status"] == "already-destroyed" and backend.epoch() == epoch + 1


def test_policy_key_tombstone_forbids_any_new_key(tmp_path):
    keys = PolicyKeyStore(str(tmp_path))
    keys.create(*GONE)
    assert keys.destroy(*GONE, now=NOW) is True
    assert not keys.exists(*GONE) and keys.destroyed_at(*GONE) == NOW
    assert keys.destroy(*GONE, now=NOW) is False
    with pytest.raises(PolicyError, match="was decommissioned"):
        keys.create(*GONE)
    with pytest.raises(PolicyError, match="was decommissioned"):
        keys.refuse_destroyed(*GONE)
    keys.create(GONE[0], "0dd0beef-0000-4000-8000-000000000200")  # the VMID reused by a new VM


# -- receipts ---------------------------------------------------------------------


def receipt_doc(**changes):
    kwargs = {
        "vmid": GONE[0],
        "vm_uuid": GONE[1],
        "cluster": "lab",
        "policy_key": {"key_name": "000b" + "00" * 32, "destroyed_at": NOW, "status": "destroyed"},
        "tombstone": {"version": 2, "payload_sha256": "ab" * 32},
        "locations": [
            {"node": "b", "status": "destroyed", "evidence": {"destroyed_at": NOW}},
            {"node": "a", "status": "unreachable", "evidence": None},
        ],
        "issued_at": NOW,
    }
    kwargs.update(changes)
    return rc.build_receipt(**kwargs)


def test_receipt_lists_unreachable_and_is_not_final():
    doc = receipt_doc()
    assert doc["unreachable"] == ["a"] and doc["final"] is False
    assert [loc["node"] for loc in doc["locations"]] == ["a", "b"]
    assert [s["state"] for s in doc["key_states"]] == ["active", "deactivated"]
    final = receipt_doc(locations=[{"node": "a", "status": "destroyed", "evidence": {"destroyed_at": NOW}}])
    assert final["final"] is True and final["key_states"][-1]["state"] == "destroyed"


def test_receipt_refuses_unknown_location_status():
    with pytest.raises(InputError, match="status"):
        receipt_doc(locations=[{"node": "a", "status": "gone"}])


def test_receipt_signature_verifies_and_tampering_is_refused():
    keys = [Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32) for n in (1, 2)]
    now = datetime(2030, 1, 1, tzinfo=UTC)
    root = load_root(new_root(keys, 2, issued_at=now, expires=now + timedelta(days=365)), "root", now)
    envelope = rc.sign_receipt(receipt_doc(), keys)
    assert rc.verify_receipt(envelope, root)["vm"]["vm_uuid"] == GONE[1]
    tampered = dataclasses.replace(envelope, payload=envelope.payload.replace(b'"final":false', b'"final":true'))
    with pytest.raises(VerificationError):
        rc.verify_receipt(tampered, root)
    with pytest.raises(VerificationError):
        rc.verify_receipt(rc.sign_receipt(receipt_doc(), keys[:1]), root)  # threshold 2 not met
    with pytest.raises(VerificationError, match="payloadType"):
        rc.verify_receipt(dsse.sign(b"{}", "application/other", keys), root)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"vmid": GONE[0], "vm_uuid": GONE[1]}, "not both"),
        ({"pve": True}, "pve and delete_vm take one VM"),
        ({"delete_vm": True}, "pve and delete_vm take one VM"),
        ({"vms": []}, "vms is empty"),
        ({"vms": [{"vmid": GONE[0]}]}, "vms entry 1 needs vmid and vm_uuid"),
        ({"vms": [{"vmid": "x", "vm_uuid": GONE[1]}]}, "VMID must be an integer"),
    ],
    ids=["with-vmid", "pve", "delete-vm", "empty", "no-uuid", "bad-vmid"],
)
def test_module_refuses_a_bad_vms_list_before_touching_the_node(node, changes, message):
    # The module's option handling imports ansible (the venv's python has it, Debian's does not).
    pytest.importorskip("ansible")
    from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.destroy_states import (  # noqa: PLC0415
        argument_spec,
        destroy_node,
    )

    backend, state_dir, _keys = node
    params = argument_spec().defaults()
    params |= {"state_dir": state_dir, "backend": backend.backend, "vms": [{"vmid": GONE[0], "vm_uuid": GONE[1]}]}
    params |= changes
    epoch = backend.epoch()
    with pytest.raises(InputError, match=message):
        destroy_node(params, check_mode=False)
    assert backend.epoch() == epoch and os.path.exists(VmDir(state_dir, *GONE).keyslot_path)


# -- which VM a decommission destroys (module_utils/_destroy/plan.py) ------------------------------------------


def test_choose_vm_takes_the_only_vm_or_the_uuid_given():
    from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.plan import choose_vm

    one = [{"vm_uuid": "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"}]
    two = one + [{"vm_uuid": "7c0a3d2f-4b5e-4f60-9b8c-2d3e4f5a6b7c"}]
    assert choose_vm(200, "", one, "/s") == one[0]["vm_uuid"]
    assert choose_vm(200, two[1]["vm_uuid"].upper(), two, "/s") == two[1]["vm_uuid"]


def test_choose_vm_refuses_an_unknown_vm_a_reused_vmid_and_a_wrong_uuid():
    from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, PlacementError
    from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.plan import choose_vm

    one = [{"vm_uuid": "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"}]
    two = one + [{"vm_uuid": "7c0a3d2f-4b5e-4f60-9b8c-2d3e4f5a6b7c"}]
    with pytest.raises(PlacementError, match="VM 4242 is unknown to the store"):
        choose_vm(4242, "", [], "/s")
    with pytest.raises(InputError, match="was used by several VMs"):
        choose_vm(200, None, two, "/s")
    with pytest.raises(PlacementError, match="has no uuid 8d1b4e30"):
        choose_vm(200, "8d1b4e30-5c6f-4071-8c9d-3e4f5a6b7c8d", two, "/s")
