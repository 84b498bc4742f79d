"""The controller's authority rules (DESIGN §7 A1-A3): one test per rule and per attack.

Each refusal is asserted by type, and where the controller keeps state (policy keys, its record of granted
migrations) that nothing moved.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._authority import rules
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.journal import MoveJournal
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.ledger import (
    NodeView,
    VmLedger,
    controller_roots,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.node_record import (
    check_enrolled,
    verified_record,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    DecommissionedError,
    ExpiredError,
    ForkError,
    InputError,
    LifetimeError,
    PlacementError,
    RecordedPolicyError,
    ThresholdError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import Ed25519PrivateKey
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, payload, trust_root
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.keystore import TrustKeyStore
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import envelope_digest
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import NODE_PAYLOAD_TYPE, NodeRecord
from rig.evidence import attestation

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)
UUID = "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"
OTHER_UUID = "7c0a3d2f-4b5e-4f60-9b8c-2d3e4f5a6b7c"
KEY = Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
FORGER = Ed25519PrivateKey.from_private_bytes(bytes([8]) * 32)
ROOT = trust_root.load_root(trust_root.new_root([KEY], 1, issued_at=NOW - DAY, expires=NOW + 365 * DAY), "root", NOW)
A = NodeView("node-a", "000b" + "aa" * 32)
B = NodeView("node-b", "000b" + "bb" * 32)
C = NodeView("node-c", "000b" + "cc" * 32)
NO_PCRS = payload.RecordedPolicy(migratable=True, pcrs=None)
PCR7 = payload.RecordedPolicy(migratable=True, pcrs="sha256:7")
PINNED = payload.RecordedPolicy(migratable=False, pcrs=None)


def statement(node: NodeView, *, uuid=UUID, blob="11", migration=None, state="active", ctime=None) -> dict:
    doc = {
        "subject": {"vmid": 100, "vm_uuid": uuid, "vm_ctime": ctime, "cluster": "lab"},
        "node": {"name": node.name, "id": node.id},
        "keyslot": None
        if state != "active"
        else {"name": "keyslot.json", "sha256": "22" * 32, "keyslot_id": "33" * 16},
        "blobs": [] if state != "active" else [{"name": "token", "sha256": blob * 32, "size": 64, "generation": 1}],
        "state": state,
    }
    if migration:
        doc["migration"] = migration
    return doc


def chain_of(*steps, signer=KEY) -> list[dsse.Envelope]:
    """Envelopes for (node, policy[, statement changes]) steps, version 1 first."""
    envelopes = []
    for index, (node, policy, *changes) in enumerate(steps):
        stmt = statement(node, **(changes[0] if changes else {}))
        manifest = payload.new_manifest(
            payload.with_policy(stmt, policy),
            version=index + 1,
            prev=envelope_digest(envelopes[-1]) if envelopes else None,
            issued_at=NOW - DAY,
            expires=NOW + 30 * DAY,
        )
        envelopes.append(dsse.sign(manifest.to_bytes(), payload.MANIFEST_PAYLOAD_TYPE, [signer]))
    return envelopes


def ledger(*steps) -> VmLedger:
    return VmLedger.verify(UUID, [dsse.envelope_to_dict(env) for env in chain_of(*steps)], ROOT)


def granted(led: VmLedger, source=A, target=B, window=timedelta(hours=1)):
    return rules.grant_duplication(led, source, target, now=NOW, not_after=NOW + window)


# -- the ledger: only the controller's trust root counts -----------------------------------------


def test_ledger_refuses_a_manifest_the_store_host_forged():
    envelopes = chain_of((A, NO_PCRS))
    forged = chain_of((A, NO_PCRS), (B, NO_PCRS), signer=FORGER)[1]
    with pytest.raises(ThresholdError):
        VmLedger.verify(UUID, [*envelopes, forged], ROOT)


NEW_KEY = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)


def rotated_roots(rotated_at):
    v1 = trust_root.new_root([KEY], 1, issued_at=NOW - 10 * DAY, expires=NOW + 365 * DAY)
    v2 = trust_root.rotate(v1, [KEY], [NEW_KEY], 1, issued_at=rotated_at, expires=NOW + 365 * DAY)
    return trust_root.load_versions([v1, v2], NOW)


def test_ledger_keeps_manifests_signed_before_a_rotation():
    """History signed by the retired keys before the rotation still counts; the newest root signs what follows."""
    envelopes = chain_of((A, NO_PCRS))  # issued NOW - DAY
    led = VmLedger.verify(UUID, envelopes, rotated_roots(rotated_at=NOW - DAY / 2))
    assert led.placement == A


def test_ledger_refuses_a_manifest_the_retired_keys_signed_after_the_rotation():
    envelopes = chain_of((A, NO_PCRS))  # issued NOW - DAY, after the rotation below
    with pytest.raises(ThresholdError):
        VmLedger.verify(UUID, envelopes, rotated_roots(rotated_at=NOW - 2 * DAY))


def test_ledger_refuses_a_gap_in_the_chain():
    envelopes = chain_of((A, NO_PCRS), (A, NO_PCRS, {"blob": "12"}), (A, NO_PCRS, {"blob": "13"}))
    with pytest.raises(VerificationError, match="without gaps"):
        VmLedger.verify(UUID, [envelopes[0], envelopes[2]], ROOT)


def test_ledger_refuses_a_second_history_spliced_in():
    first = chain_of((A, NO_PCRS), (A, NO_PCRS, {"blob": "12"}))
    other = chain_of((A, NO_PCRS, {"blob": "99"}), (B, NO_PCRS))
    with pytest.raises(ForkError):
        VmLedger.verify(UUID, [first[0], other[1]], ROOT)


def test_ledger_refuses_another_vms_manifest():
    envelopes = chain_of((A, NO_PCRS, {"uuid": OTHER_UUID}))
    with pytest.raises(VerificationError, match="describes VM"):
        VmLedger.verify(UUID, envelopes, ROOT)


def test_ledger_reads_placement_and_recorded_policy():
    led = ledger(
        (A, PCR7),
        (B, PCR7, {"migration": {"source": "node-a", "target": "node-b", "not_after": "2030-06-02T00:00:00Z"}}),
    )
    assert led.placement == B
    assert led.policy == PCR7
    assert led.newest.version == 2


# -- A1 placement ----------------------------------------------------------------------------------


def test_a1_first_provision_is_approved_on_the_node_it_is_provisioned_on():
    assert rules.approve_unseal(ledger(), A, pcrs=None, now=NOW, provision=NO_PCRS) == NO_PCRS


def test_a1_a_vm_without_a_chain_is_not_approved_outside_provisioning():
    with pytest.raises(PlacementError):
        rules.approve_unseal(ledger(), A, pcrs=None, now=NOW)


def test_a1_revived_copy_is_not_approved_on_the_node_it_left():
    """VM moved A -> B; A's old copy is put back: the controller approves it on B only."""
    led = ledger(
        (A, NO_PCRS),
        (B, NO_PCRS, {"migration": {"source": "node-a", "target": "node-b", "not_after": "2030-06-02T00:00:00Z"}}),
    )
    assert rules.approve_unseal(led, B, pcrs=None, now=NOW) == NO_PCRS
    with pytest.raises(PlacementError):
        rules.approve_unseal(led, A, pcrs=None, now=NOW)


def test_a1_a_node_claiming_another_nodes_name_is_refused():
    impostor = NodeView("node-a", C.id)
    with pytest.raises(PlacementError):
        rules.approve_unseal(ledger((A, NO_PCRS)), impostor, pcrs=None, now=NOW)


def test_a1_provisioning_a_vm_the_ledger_places_elsewhere_is_refused():
    with pytest.raises(PlacementError, match="migrate"):
        rules.approve_unseal(ledger((A, NO_PCRS)), B, pcrs=None, now=NOW, provision=NO_PCRS)


def test_a1_decommissioned_vm_gets_nothing():
    led = ledger((A, NO_PCRS), (A, NO_PCRS, {"state": "destroyed"}))
    with pytest.raises(DecommissionedError):
        rules.approve_unseal(led, A, pcrs=None, now=NOW)
    with pytest.raises(DecommissionedError):
        rules.approve_unseal(led, A, pcrs=None, now=NOW, provision=NO_PCRS)


def test_a1_granted_migration_target_is_approved_before_the_move_is_recorded():
    led = ledger((A, NO_PCRS))
    move = granted(led)
    assert rules.approve_unseal(led, B, pcrs=None, now=NOW, move=move) == NO_PCRS


def test_a1_a_node_the_controller_sent_nothing_to_is_refused():
    led = ledger((A, NO_PCRS))
    with pytest.raises(PlacementError, match="granted no migration"):
        rules.approve_unseal(led, B, pcrs=None, now=NOW)
    with pytest.raises(PlacementError, match="goes to node-b"):
        rules.approve_unseal(led, C, pcrs=None, now=NOW, move=granted(led))


def test_a1_of_two_migrations_only_the_one_granted_last_completes():
    led = ledger((A, NO_PCRS))
    granted(led, target=B)
    last = granted(led, target=C)
    assert rules.approve_unseal(led, C, pcrs=None, now=NOW, move=last) == NO_PCRS
    with pytest.raises(PlacementError):
        rules.approve_unseal(led, B, pcrs=None, now=NOW, move=last)


def test_a1_an_old_grant_does_not_apply_after_the_vm_changed():
    """A grant A -> B, then the VM was re-sealed on A: the old grant's record no longer approves B."""
    old = ledger((A, NO_PCRS))
    move = granted(old)
    newer = ledger((A, NO_PCRS), (A, NO_PCRS, {"blob": "12"}))
    with pytest.raises(PlacementError, match="no longer applies"):
        rules.approve_unseal(newer, B, pcrs=None, now=NOW, move=move)


def test_a1_an_expired_migration_is_refused():
    led = ledger((A, NO_PCRS))
    move = granted(led)
    with pytest.raises(ExpiredError):
        rules.approve_unseal(led, B, pcrs=None, now=NOW + timedelta(hours=2), move=move)


def test_a1_survivors_are_the_vms_the_ledger_places_on_the_node():
    here = VmLedger.verify(UUID, chain_of((A, PCR7)), ROOT)
    moved = VmLedger.verify(
        OTHER_UUID,
        chain_of(
            (A, NO_PCRS, {"uuid": OTHER_UUID}),
            (
                B,
                NO_PCRS,
                {
                    "uuid": OTHER_UUID,
                    "migration": {"source": "node-a", "target": "node-b", "not_after": "2030-06-02T00:00:00Z"},
                },
            ),
        ),
        ROOT,
    )
    vms = [{"vmid": 100, "vm_uuid": UUID}, {"vmid": 101, "vm_uuid": OTHER_UUID}]
    placed, refused = rules.sort_survivors({UUID: here, OTHER_UUID: moved}, vms, A, NOW)
    assert placed == [{"vmid": 100, "vm_uuid": UUID, "pcrs": "sha256:7", "vm_ctime": None, "cluster": "lab"}]
    assert [r["vm_uuid"] for r in refused] == [OTHER_UUID]
    assert "node-b" in refused[0]["reason"]


def test_a1_a_rewrapped_survivor_is_described_with_the_ctime_and_cluster_its_manifest_records():
    """A survivor whose keyslot an epoch bump rewrapped is recorded again from what its node describes: the entry it
    is described from must carry the creation time and cluster the VM's manifest records, or its next version would
    drop the creation-time binding (a VM recreated under the same VMID would then pass for it) and name the default
    cluster."""
    here = VmLedger.verify(UUID, chain_of((A, PCR7, {"ctime": 1700000000})), ROOT)
    placed, refused = rules.sort_survivors({UUID: here}, [{"vmid": 100, "vm_uuid": UUID}], A, NOW)
    assert refused == []
    assert (placed[0]["vm_ctime"], placed[0]["cluster"]) == (1700000000, "lab")


def test_a1_a_keyslot_with_no_chain_is_not_a_survivor():
    placed, refused = rules.sort_survivors({UUID: VmLedger(UUID, [])}, [{"vmid": 100, "vm_uuid": UUID}], A, NOW)
    assert placed == [] and len(refused) == 1


# -- A2 recorded policy ----------------------------------------------------------------------------


def test_a2_approval_without_the_recorded_pcrs_is_refused():
    """Point 4: deleting approval.json on the node (no PCR selection) must not drop the PCR binding."""
    with pytest.raises(RecordedPolicyError):
        rules.approve_unseal(ledger((A, PCR7)), A, pcrs=None, now=NOW)
    with pytest.raises(RecordedPolicyError):
        rules.approve_unseal(ledger((A, PCR7)), A, pcrs="sha256:0", now=NOW)
    assert rules.approve_unseal(ledger((A, PCR7)), A, pcrs="sha256:7", now=NOW) == PCR7


def test_a2_migration_keeps_the_recorded_pcrs():
    led = ledger((A, PCR7))
    move = granted(led)
    with pytest.raises(RecordedPolicyError):
        rules.approve_unseal(led, B, pcrs=None, now=NOW, move=move)
    assert rules.approve_unseal(led, B, pcrs="sha256:7", now=NOW, move=move) == PCR7


def test_a2_reprovision_may_change_pcrs_but_never_migratable():
    assert rules.approve_unseal(ledger((A, PCR7)), A, pcrs=None, now=NOW, provision=NO_PCRS) == NO_PCRS
    with pytest.raises(RecordedPolicyError, match="migratable"):
        rules.approve_unseal(ledger((A, PINNED)), A, pcrs=None, now=NOW, provision=NO_PCRS)


def test_a2_first_manifest_needs_the_provisioned_policy():
    with pytest.raises(RecordedPolicyError):
        rules.manifest_policy(ledger(), statement(A), now=NOW)
    assert rules.manifest_policy(ledger(), statement(A), now=NOW, provision=PCR7) == PCR7


def test_a2_later_manifests_keep_the_recorded_policy():
    assert rules.manifest_policy(ledger((A, PCR7)), statement(A, blob="12"), now=NOW) == PCR7
    tomb = statement(A, state="destroyed")
    assert rules.manifest_policy(ledger((A, PCR7)), tomb, now=NOW) == PCR7


def test_a2_a_migration_cannot_change_the_policy():
    led = ledger((A, PCR7))
    move = granted(led)
    moved = statement(B, migration={"source": "node-a", "target": "node-b", "not_after": move.not_after})
    assert rules.manifest_policy(led, moved, now=NOW, move=move) == PCR7
    with pytest.raises(RecordedPolicyError):
        rules.manifest_policy(led, moved, now=NOW, move=move, provision=NO_PCRS)


def test_a1_manifest_placing_the_vm_on_another_node_needs_the_granted_move():
    led = ledger((A, NO_PCRS))
    with pytest.raises(PlacementError):
        rules.manifest_policy(led, statement(B), now=NOW)
    claimed = statement(B, migration={"source": "node-a", "target": "node-b", "not_after": "2030-06-02T00:00:00Z"})
    with pytest.raises(PlacementError):
        rules.manifest_policy(led, claimed, now=NOW)
    other_way = statement(B, migration={"source": "node-c", "target": "node-b", "not_after": "2030-06-02T00:00:00Z"})
    with pytest.raises(PlacementError):
        rules.manifest_policy(led, other_way, now=NOW, move=granted(led))


def test_a2_only_provisioning_states_a_policy():
    with pytest.raises(InputError):
        rules.requested_policy(False, {"migratable": True})
    assert rules.requested_policy(False, None) is None
    assert rules.requested_policy(True, "migratable=true;pcrs=sha256:7") == PCR7


# -- A3 grants -------------------------------------------------------------------------------------


def test_a3_grant_only_from_the_node_the_ledger_places_the_vm_on():
    with pytest.raises(PlacementError):
        granted(ledger((A, NO_PCRS)), source=B, target=C)


def test_a3_grant_for_a_vm_recorded_not_migratable_is_refused():
    with pytest.raises(RecordedPolicyError):
        granted(ledger((A, PINNED)))


def test_a3_grant_to_the_source_itself_is_refused():
    with pytest.raises(PlacementError):
        granted(ledger((A, NO_PCRS)), target=NodeView("node-a2", A.id))


def test_a3_grant_window_is_bounded():
    with pytest.raises(LifetimeError):
        granted(ledger((A, NO_PCRS)), window=timedelta(days=8))
    with pytest.raises(LifetimeError):
        granted(ledger((A, NO_PCRS)), window=timedelta(0))


def test_a3_grant_for_a_decommissioned_vm_is_refused():
    with pytest.raises(DecommissionedError):
        granted(ledger((A, NO_PCRS), (A, NO_PCRS, {"state": "destroyed"})))


def test_a3_grant_records_source_target_and_manifest():
    led = ledger((A, NO_PCRS))
    move = granted(led)
    assert (move.source_name, move.target_name, move.manifest_version) == ("node-a", "node-b", 1)
    assert move.manifest_digest == led.newest_ref.digest


# -- the controller's own state --------------------------------------------------------------------


def test_journal_keeps_the_move_granted_last(tmp_path):
    journal = MoveJournal(str(tmp_path))
    led = ledger((A, NO_PCRS))
    assert journal.get(UUID) is None
    assert journal.put(granted(led, target=B)) is True
    assert journal.put(granted(led, target=B)) is False
    journal.put(granted(led, target=C))
    assert journal.get(UUID).target_name == "node-c"
    assert oct(os.stat(journal.path(UUID)).st_mode & 0o777) == "0o600"


def test_controller_root_is_the_controllers_own(tmp_path):
    with pytest.raises(InputError, match="init"):
        controller_roots(str(tmp_path), NOW)
    envelope = trust_root.new_root([KEY], 1, issued_at=NOW - DAY, expires=NOW + 365 * DAY)
    TrustKeyStore(str(tmp_path)).save_root(envelope, dsse.envelope_to_bytes(envelope))
    assert [root.keys for root in controller_roots(str(tmp_path), NOW)] == [ROOT.keys]


# -- A3/A4: grants and first approvals bind only what a signed node record enrolled ----------------------------


def _node_record(name: str, srk: str, *, enrolled_at: datetime = NOW - DAY, backend: str = "tpm2"):
    return NodeRecord(
        node=name,
        backend=backend,
        srk_name=srk,
        srk_public="AAEAAQ==",
        epoch_nv_index="0x01500000" if backend == "tpm2" else None,
        epoch_nv_name=("000b" + "ee" * 32) if backend == "tpm2" else None,
        enrolled_at=canonical.utc_timestamp(enrolled_at),
        attestation=attestation(srk, "AAEAAQ==") if backend == "tpm2" else None,
    )


def _signed_record(record, signer=KEY) -> dict:
    return dsse.envelope_to_dict(dsse.sign(record.to_bytes(), NODE_PAYLOAD_TYPE, [signer]))


def test_target_record_signed_by_the_controller_is_the_one_bound():
    record = verified_record(_signed_record(_node_record("node-b", B.id)), [ROOT], "node-b", NOW)
    assert record.srk_name == B.id


def test_forged_target_record_gets_no_grant():
    """A software key posing as the target's SRK, in a record the store host (or anyone) signed: refused."""
    forged = _signed_record(_node_record("node-b", "000b" + "ff" * 32), signer=FORGER)
    with pytest.raises(ThresholdError):
        verified_record(forged, [ROOT], "node-b", NOW)


def test_swapped_target_record_gets_no_grant():
    """node-c's genuine record filed under node-b's name: the name inside the signed payload decides."""
    with pytest.raises(VerificationError, match="swapped"):
        verified_record(_signed_record(_node_record("node-c", C.id)), [ROOT], "node-b", NOW)


def test_unenrolled_target_gets_no_grant():
    with pytest.raises(InputError, match="not enrolled"):
        verified_record(None, [ROOT], "node-b", NOW)


def test_record_signed_by_a_retired_key_after_the_rotation_is_refused():
    """Keys retired by a rotation sign nothing new: a record they signed after it does not count; one from before
    the rotation still does."""
    new_key = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)
    rotated_at = NOW - DAY / 2
    v2 = trust_root.rotate(ROOT.envelope, [KEY], [new_key], 1, issued_at=rotated_at, expires=NOW + 365 * DAY)
    roots = trust_root.load_versions([ROOT.envelope, v2], NOW)
    before = _signed_record(_node_record("node-b", B.id, enrolled_at=rotated_at - DAY / 4))
    assert verified_record(before, roots, "node-b", NOW).srk_name == B.id
    after = _signed_record(_node_record("node-b", "000b" + "ff" * 32, enrolled_at=rotated_at + DAY / 4))
    with pytest.raises(ThresholdError):
        verified_record(after, roots, "node-b", NOW)
    renewed = _signed_record(_node_record("node-b", B.id, enrolled_at=rotated_at + DAY / 4), signer=new_key)
    assert verified_record(renewed, roots, "node-b", NOW).srk_name == B.id


def test_node_answering_with_another_srk_gets_no_first_approval():
    """Provisioning approves a node only as the node its signed record enrolled (TPM swapped, or another machine
    answering under its name)."""
    record = _node_record("node-a", A.id)
    check_enrolled(record, "node-a", A.id.upper())
    with pytest.raises(PlacementError, match="signed record holds"):
        check_enrolled(record, "node-a", B.id)
