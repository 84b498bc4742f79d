# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The store host as the attacker (DESIGN §7 A4-A6): swapped or forged node records, a rolled-back
or truncated store, forged trust roots. Each refusal is typed and changes nothing; injected clock."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._authority import head as authority
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.node_record import (
    record_to_sign,
    verify_node_record,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    FormatError,
    InputError,
    RollbackError,
    ThresholdError,
    TruncationError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import Ed25519PrivateKey
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, payload, trust_root
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.cache import NodeCache
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import ManifestRef, envelope_digest
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.head import HEAD_PAYLOAD_TYPE, head_payload
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import (
    NODE_PAYLOAD_TYPE,
    NodeRecord,
    parse_node_record,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.store import Store
from rig.evidence import attestation

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)
UUID_A = "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"
UUID_B = "0f0e0d0c-0b0a-4909-8807-0605040302ab"
NODE_ID = "000b" + "aa" * 32


def key(n: int):
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


KEYS = (key(1), key(2), key(3))
HEAD_KEY = key(9)
OUTSIDER = key(7)
ROOT_ENV = trust_root.new_root(KEYS, 2, issued_at=NOW - 10 * DAY, expires=NOW + 365 * DAY, head_keys=[HEAD_KEY])
ROOT = trust_root.load_root(ROOT_ENV, "root", NOW)


def snapshot(root) -> dict:
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in files + dirs:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = Path(path).read_bytes() if stat.S_ISREG(st.st_mode) else None
    return out


def record(name: str = "node-a", srk_name: str = NODE_ID, trust: str = "ca") -> NodeRecord:
    return NodeRecord(
        node=name,
        backend="tpm2",
        srk_name=srk_name,
        srk_public="AAAA",
        epoch_nv_index="0x01c10000",
        epoch_nv_name="000b" + "cc" * 32,
        enrolled_at="2030-05-01T00:00:00Z",
        attestation=attestation(srk_name, "AAAA", trust),
    )


def signed_record(name: str = "node-a", signers=KEYS[:2], **fields) -> dsse.Envelope:
    return dsse.sign(record(name, **fields).to_bytes(), NODE_PAYLOAD_TYPE, signers)


def manifest(version: int, prev: dsse.Envelope | None, uuid: str = UUID_A) -> dsse.Envelope:
    stmt = {
        "subject": {"vmid": 100, "vm_uuid": uuid, "vm_ctime": None, "cluster": "lab"},
        "node": {"name": "node-a", "id": NODE_ID},
        "keyslot": {"name": "keyslot.json", "sha256": "22" * 32, "keyslot_id": "33" * 16},
        "blobs": [{"name": "token", "sha256": f"{version:02x}" * 32, "size": 120, "generation": 1}],
        "state": "active",
        "policy": {"migratable": True, "pcrs": None},
    }
    prev_digest = envelope_digest(prev) if prev is not None else None
    body = payload.new_manifest(stmt, version=version, prev=prev_digest, issued_at=NOW - DAY, expires=NOW + 30 * DAY)
    return dsse.sign(body.to_bytes(), payload.MANIFEST_PAYLOAD_TYPE, KEYS[:2])


@pytest.fixture
def controller(tmp_path):
    return str(tmp_path / "controller")


def commit(store: Store, controller: str, touched) -> dsse.Envelope:
    """What the action plugin does after a store write: sign the next head, write it, remember it."""
    head = authority.next_head(
        store.head(), ROOT, authority.known_version(controller), store.view(), touched, [HEAD_KEY], NOW
    )
    store.put_head(head)
    authority.record_signed(controller, head)
    return head


@pytest.fixture
def store(tmp_path, controller):
    """A store with a root, VM A at version 2, VM B at version 1 and node-a's record, and its head."""
    store = Store(str(tmp_path / "store"))
    store.init()
    store.put_root(ROOT_ENV, NOW)
    commit(store, controller, ["trust/root-00000001.json"])
    v1 = manifest(1, None)
    store.put_manifest(v1, NOW)
    store.put_manifest(manifest(2, v1), NOW)
    store.put_manifest(manifest(1, None, UUID_B), NOW)
    store.put_node(signed_record())
    commit(store, controller, [f"vm:{UUID_A}", f"vm:{UUID_B}", "nodes/node-a.json"])
    return store


def check(store: Store, controller: str):
    return authority.check_store_view(store.head(), ROOT, authority.known_version(controller), store.view())


# ------------------------------------------------------------------------- A4 node records


def test_node_record_verifies_for_its_node():
    got = verify_node_record(dsse.envelope_to_dict(signed_record()), ROOT, "node-a", NOW)
    assert got == record()
    assert got.to_dict()["srk_name"] == NODE_ID


def test_swapped_node_record_refused(store, controller):
    """The store host puts node-b's (validly signed) record under node-a's name."""
    store.put_node(signed_record("node-b", srk_name="000b" + "bb" * 32))
    os.replace(os.path.join(store.nodes_dir, "node-b.json"), os.path.join(store.nodes_dir, "node-a.json"))
    before = snapshot(store.path)
    with pytest.raises(VerificationError, match="record of node 'node-b'.*swapped"):
        verify_node_record(store.read_node("node-a"), ROOT, "node-a", NOW)
    # The head sees the swap too: node-a's file is not the one it lists.
    with pytest.raises(TruncationError, match="nodes/node-a.json.*altered"):
        check(store, controller)
    assert snapshot(store.path) == before


def test_node_record_signed_outside_trust_root_refused():
    forged = signed_record(signers=[OUTSIDER])
    with pytest.raises(ThresholdError):
        verify_node_record(dsse.envelope_to_dict(forged), ROOT, "node-a", NOW)
    # One trust-root key is below the threshold of two, an outsider's signature does not count.
    with pytest.raises(ThresholdError):
        verify_node_record(dsse.envelope_to_dict(signed_record(signers=[KEYS[0], OUTSIDER])), ROOT, "node-a", NOW)


def test_old_format_node_record_refused_with_reenroll_message(store):
    old = {"format": "ironclaw-node-record/1", "node": "node-a", "srk_name": NODE_ID}
    with pytest.raises(FormatError, match="re-enroll"):
        verify_node_record(old, ROOT, "node-a", NOW)
    signed_old = dsse.sign(canonical.dumps(old), NODE_PAYLOAD_TYPE, KEYS[:2])
    with pytest.raises(FormatError, match="re-enroll"):
        verify_node_record(dsse.envelope_to_dict(signed_old), ROOT, "node-a", NOW)


def test_node_record_of_another_payload_type_refused():
    wrong = dsse.sign(record().to_bytes(), payload.MANIFEST_PAYLOAD_TYPE, KEYS[:2])
    with pytest.raises(VerificationError, match="payloadType"):
        verify_node_record(dsse.envelope_to_dict(wrong), ROOT, "node-a", NOW)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda doc: {**doc, "extra": 1},
        lambda doc: {key: value for key, value in doc.items() if key != "srk_public"},
        lambda doc: {**doc, "backend": "tpm3"},
        lambda doc: {**doc, "epoch_nv_index": "0x1C10000"},
    ],
    ids=["unknown-field", "missing-field", "bad-backend", "bad-nv-index"],
)
def test_node_record_payload_is_strict(mutate):
    doc = mutate(record().to_dict())
    with pytest.raises(FormatError):
        parse_node_record(canonical.dumps(doc), "record")
    with pytest.raises(FormatError):
        parse_node_record(record().to_bytes() + b" ", "record")


def test_changed_srk_is_not_re_enrolled_without_replace():
    srk = "000b" + "dd" * 32
    facts = {**record().to_dict(), "provisioned": True, "srk_name": srk}
    evidence = attestation(srk, "AAAA")
    with pytest.raises(VerificationError, match="node_enroll_replace"):
        record_to_sign(facts, "node-a", record(), False, NOW, evidence)
    new, reason = record_to_sign(facts, "node-a", record(), True, NOW, evidence)
    assert new.srk_name == srk and reason == "re-enrolled"
    assert new.attestation == evidence
    same, reason = record_to_sign(
        {**record().to_dict(), "provisioned": True}, "node-a", record(), False, NOW, attestation(NODE_ID, "AAAA")
    )
    assert same is None and reason.startswith("already enrolled")


def test_unattested_tpm_node_is_not_enrolled():
    """A TPM node's record is signed only with the evidence of its proof: a playbook that skips the proof gets none."""
    facts = {**record().to_dict(), "provisioned": True}
    with pytest.raises(InputError, match="attestation proof"):
        record_to_sign(facts, "node-a", None, False, NOW)


def test_proof_of_another_srk_is_not_signed_into_the_record():
    """The proof ran against one TPM, the facts came from another (or the SRK changed in between): nothing signed."""
    facts = {**record().to_dict(), "provisioned": True}
    with pytest.raises(VerificationError, match="another TPM"):
        record_to_sign(facts, "node-a", None, False, NOW, attestation("000b" + "dd" * 32, "AAAA"))


def test_software_node_record_carries_no_attestation():
    facts = {**record().to_dict(), "provisioned": True, "backend": "software"}
    with pytest.raises(InputError, match="no TPM"):
        record_to_sign(facts, "node-a", None, False, NOW, attestation(NODE_ID, "AAAA"))
    new, _reason = record_to_sign(facts, "node-a", None, False, NOW)
    assert new.attestation is None and new.trust is None


@pytest.mark.parametrize(
    "mutate",
    [
        lambda a: {**a, "srk_name": "000b" + "dd" * 32},
        lambda a: {**a, "trust": "trusted"},
        lambda a: {**a, "ek_chain": []},
        lambda a: {**a, "extra": 1},
        lambda a: {k: v for k, v in a.items() if k != "ak_public"},
    ],
    ids=["other-srk", "bad-trust", "ca-without-chain", "unknown-field", "missing-field"],
)
def test_tampered_attestation_in_a_node_record_is_refused(mutate):
    doc = record().to_dict()
    doc["attestation"] = mutate(doc["attestation"])
    with pytest.raises(FormatError):
        parse_node_record(canonical.dumps(doc), "record")


def test_pre_attestation_record_parses_without_evidence():
    """Format 2 records (enrolled before attestation) still verify; they carry no evidence (trust None)."""
    doc = {**record().to_dict(), "format": "ironclaw-node-record/2"}
    del doc["attestation"]
    parsed = parse_node_record(canonical.dumps(doc), "record")
    assert parsed.attestation is None and parsed.trust is None


# ------------------------------------------------------------------------- A5 store head


def test_consistent_store_accepted(store, controller):
    head = check(store, controller)
    assert head.version == 2 and head.view.vms[UUID_A].version == 2


def test_rollback_head_older_than_controllers_refused(store, controller):
    """The store host serves a whole, self-consistent older copy: its head is older than the one signed."""
    old_head = store.head()
    store.put_node(signed_record("node-b"))
    commit(store, controller, ["nodes/node-b.json"])
    os.remove(os.path.join(store.nodes_dir, "node-b.json"))
    Path(store.head_path).write_bytes(dsse.envelope_to_bytes(old_head))
    before = snapshot(store.path)
    with pytest.raises(RollbackError, match="head is version 2, but version 3"):
        check(store, controller)
    with pytest.raises(RollbackError):
        authority.next_head(store.head(), ROOT, 3, store.view(), [], [HEAD_KEY], NOW)
    assert snapshot(store.path) == before and authority.known_version(controller) == 3


def test_deleted_head_refused_as_rollback(store, controller):
    os.remove(store.head_path)
    with pytest.raises(RollbackError, match="no signed head"):
        check(store, controller)


def test_truncation_newest_manifest_deleted_names_the_vm(store, controller):
    os.remove(os.path.join(store.vms_dir, UUID_A, "manifest-00000002.json"))
    before = snapshot(store.path)
    with pytest.raises(TruncationError, match=f"VM {UUID_A}: the store's newest manifest is version 1.*version 2"):
        check(store, controller)
    # Nor is a new head signed over the truncated store, whatever else is written.
    with pytest.raises(TruncationError, match=UUID_A):
        authority.next_head(store.head(), ROOT, 2, store.view(), [f"vm:{UUID_A}"], [HEAD_KEY], NOW)
    assert snapshot(store.path) == before and authority.known_version(controller) == 2


def test_truncation_whole_vm_deleted_names_the_vm(store, controller):
    for name in os.listdir(os.path.join(store.vms_dir, UUID_B)):
        os.remove(os.path.join(store.vms_dir, UUID_B, name))
    os.rmdir(os.path.join(store.vms_dir, UUID_B))
    with pytest.raises(TruncationError, match=f"VM {UUID_B}: the head lists manifest version 1, the store holds none"):
        check(store, controller)


def test_truncation_listed_file_missing_names_the_file(store, controller):
    os.remove(os.path.join(store.nodes_dir, "node-a.json"))
    with pytest.raises(TruncationError, match="file nodes/node-a.json: listed in the head, missing"):
        check(store, controller)


def test_extra_file_refused(store, controller):
    """A validly signed record or manifest the head does not list is refused, named."""
    store.put_node(signed_record("node-b"))
    with pytest.raises(TruncationError, match="nodes/node-b.json: in the store, not listed in the head"):
        check(store, controller)
    os.remove(os.path.join(store.nodes_dir, "node-b.json"))
    latest = store.latest(UUID_B)[0]
    store.put_manifest(manifest(2, latest, UUID_B), NOW)
    with pytest.raises(TruncationError, match=f"VM {UUID_B}: the store holds manifest version 2, the head lists 1"):
        check(store, controller)


def test_next_head_refuses_changes_this_write_did_not_make(store, controller):
    """A crash-free write adds only what it touched; an extra file slipped in meanwhile stops the signing."""
    store.put_node(signed_record("node-b"))
    store.put_node(signed_record("node-c"))
    before = snapshot(store.path)
    with pytest.raises(TruncationError, match="node-c.json"):
        authority.next_head(store.head(), ROOT, 2, store.view(), ["nodes/node-b.json"], [HEAD_KEY], NOW)
    assert snapshot(store.path) == before and authority.known_version(controller) == 2
    head = commit(store, controller, ["nodes/node-b.json", "nodes/node-c.json"])
    assert authority.verify_head(head, ROOT).version == 3
    # Nothing changed: no new head.
    assert authority.next_head(store.head(), ROOT, 3, store.view(), [], [HEAD_KEY], NOW) is None


def test_head_signed_by_a_key_outside_the_root_refused(store, controller):
    view = store.view()
    forged = dsse.sign(head_payload(5, "2030-06-01T12:00:00Z", view), HEAD_PAYLOAD_TYPE, [OUTSIDER])
    Path(store.head_path).write_bytes(dsse.envelope_to_bytes(forged))
    with pytest.raises(ThresholdError):
        check(store, controller)


def test_root_without_head_keys_needs_its_threshold_for_the_head(store):
    root_env = trust_root.new_root(KEYS, 2, issued_at=NOW - DAY, expires=NOW + DAY)
    root = trust_root.load_root(root_env, "root", NOW)
    one = dsse.sign(head_payload(1, "2030-06-01T12:00:00Z", store.view()), HEAD_PAYLOAD_TYPE, KEYS[:1])
    with pytest.raises(ThresholdError):
        authority.verify_head(one, root)
    two = authority.next_head(None, root, 0, store.view(), list(_all_keys(store)), KEYS, NOW)
    assert authority.verify_head(two, root).version == 1


def _all_keys(store: Store):
    view = store.view()
    return [f"vm:{uuid}" for uuid in view.vms] + list(view.files)


def test_controller_known_version_never_goes_down(store, controller):
    old = store.head()
    with pytest.raises(RollbackError):
        authority.record_signed(controller, old)
    assert authority.known_version(controller) == 2


# ------------------------------------------------------------------------- node-side head floor


def node_check(state_dir: str, store: Store, vm_uuid=UUID_A):
    latest = store.latest(vm_uuid)
    ref = ManifestRef(latest[1].version, envelope_digest(latest[0]))
    return NodeCache(state_dir).check_head(store.head(), ROOT, vm_uuid, ref)


def test_node_cache_newer_head_than_store_refused(store, controller, tmp_path):
    state_dir = str(tmp_path / "node")
    cache = NodeCache(state_dir)
    old_head = store.head()
    store.put_node(signed_record("node-b"))
    assert cache.save_head(node_check(state_dir, store) and commit(store, controller, ["nodes/node-b.json"]))
    # The store host now serves the older head (a second controller without the newer one would not notice).
    Path(store.head_path).write_bytes(dsse.envelope_to_bytes(old_head))
    before = snapshot(state_dir)
    with pytest.raises(RollbackError, match="this node already saw version 3"):
        node_check(state_dir, store)
    assert snapshot(state_dir) == before


def test_node_refuses_a_head_that_does_not_list_the_manifest_given(store, tmp_path):
    older = store.chain(UUID_A)[0]
    with pytest.raises(TruncationError, match=f"lists version 2 for VM {UUID_A}.*version 1"):
        NodeCache(str(tmp_path / "node")).check_head(
            store.head(), ROOT, UUID_A, ManifestRef(1, envelope_digest(older[0]))
        )
    assert not (tmp_path / "node").exists()


# ------------------------------------------------------------------------- A6 pinned trust roots


def forged_root():
    return trust_root.new_root([OUTSIDER], 1, issued_at=NOW - DAY, expires=NOW + 365 * DAY)


def _manifest_states():
    pytest.importorskip("ansible", reason="the module's option set comes from ansible-core (controller venv)")
    from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible import manifest_states

    return manifest_states


def test_forged_root_not_accepted_by_a_node_with_an_empty_cache(tmp_path):
    """Enrollment pins the controller's root; a forged root offered later (the store's copy) is refused."""
    manifest_states = _manifest_states()
    state_dir = str(tmp_path / "node")
    params = {"state_dir": state_dir, "now": "2030-06-01T12:00:00Z"}
    pinned = manifest_states.pinned({**params, "trust_roots": [dsse.envelope_to_dict(ROOT_ENV)]}, False)
    assert pinned["changed"] and pinned["trust_root"]["version"] == 1
    before = snapshot(state_dir)
    with pytest.raises(RollbackError):
        manifest_states.pinned({**params, "trust_roots": [dsse.envelope_to_dict(forged_root())]}, False)
    assert snapshot(state_dir) == before
    assert NodeCache(state_dir).roots() == [ROOT_ENV]


def test_listed_trust_roots_are_the_controllers_never_the_stores(store, controller, tmp_path):
    """A forged root in the store's trust/ is not what the controller hands on to nodes."""
    manifest_states = _manifest_states()
    from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.keystore import TrustKeyStore
    from ansible_collections.ironclaw.sealed.plugins.plugin_utils.manifest_controller import checked_listing

    TrustKeyStore(controller).save_root(ROOT_ENV, dsse.envelope_to_bytes(ROOT_ENV))
    Path(store.trust_dir, "root-00000001.json").write_bytes(dsse.envelope_to_bytes(forged_root()))
    listing = manifest_states.listed(
        {"store_dir": store.path, "node_name": "node-a", "vm_uuid": None, "vmid": None, "vm_uuids": None}, False
    )
    assert listing["trust_roots"] == [dsse.envelope_to_dict(forged_root())]
    # The store's root file no longer matches its head: the whole listing is refused, naming it.
    with pytest.raises(TruncationError, match="trust/root-00000001.json.*altered"):
        checked_listing(listing, controller, NOW)
    Path(store.trust_dir, "root-00000001.json").write_bytes(dsse.envelope_to_bytes(ROOT_ENV))
    _root, out = checked_listing(
        manifest_states.listed({**_args(store), "node_name": "node-a"}, False), controller, NOW
    )
    assert out["trust_roots"] == [dsse.envelope_to_dict(ROOT_ENV)]


def _args(store: Store) -> dict:
    return {"store_dir": store.path, "node_name": None, "vm_uuid": None, "vmid": None, "vm_uuids": None}


def test_listed_needs_something_to_list(store):
    with pytest.raises(InputError):
        _manifest_states().listed(_args(store), False)
