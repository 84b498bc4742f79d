# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The manifest store: append-only chains, forks, gaps, tombstones and damage; injected clock."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    FormatError,
    InputError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import Ed25519PrivateKey
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, payload, trust_root
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import (
    ForkError,
    ManifestRef,
    envelope_digest,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import NODE_PAYLOAD_TYPE, NodeRecord
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.store import Store

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)
UUID_A = "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"
UUID_B = "0f0e0d0c-0b0a-4909-8807-0605040302ab"
NODE_ID = "000b" + "aa" * 32


def key(n: int):
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


KEYS = (key(1), key(2), key(3))
NEW_KEYS = (key(4), key(5))


def statement(vmid=100, uuid=UUID_A, blob_sha="11" * 32) -> dict:
    return {
        "subject": {"vmid": vmid, "vm_uuid": uuid, "vm_ctime": None, "cluster": "lab"},
        "node": {"name": "node-a", "id": NODE_ID},
        "keyslot": {"name": "keyslot.json", "sha256": "22" * 32, "keyslot_id": "33" * 16},
        "blobs": [{"name": "token", "sha256": blob_sha, "size": 120, "generation": 1}],
        "state": "active",
        "policy": {"migratable": True, "pcrs": None},
    }


def signed(stmt: dict, version: int, prev: dict | dsse.Envelope | None, signers=KEYS[:2], expires=NOW + 30 * DAY):
    prev_digest = envelope_digest(prev) if isinstance(prev, dsse.Envelope) else prev
    manifest = payload.new_manifest(stmt, version=version, prev=prev_digest, issued_at=NOW - DAY, expires=expires)
    return dsse.sign(manifest.to_bytes(), payload.MANIFEST_PAYLOAD_TYPE, signers)


def chain(length: int, stmt=None) -> list[dsse.Envelope]:
    envelopes, prev = [], None
    for version in range(1, length + 1):
        prev = signed(stmt or statement(blob_sha=f"{version:02x}" * 32), version, prev)
        envelopes.append(prev)
    return envelopes


def snapshot(root) -> dict:
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in files + dirs:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            content = Path(path).read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(path, root)] = (content, stat.S_IMODE(st.st_mode), st.st_ino)
    return out


ROOT_V1 = trust_root.new_root(KEYS, 2, issued_at=NOW - 10 * DAY, expires=NOW + 365 * DAY)


@pytest.fixture
def store(tmp_path):
    store = Store(str(tmp_path / "store"))
    assert store.init() is True
    assert store.put_root(ROOT_V1, NOW) is True
    return store


def manifest_path(store: Store, uuid: str, version: int) -> str:
    return os.path.join(store.vms_dir, uuid, f"manifest-{version:08d}.json")


# ---------------------------------------------------------------- layout and trust roots


def test_init_layout_and_permissions(store):
    assert store.init() is False
    for name in ("trust", "vms", "nodes", "receipts"):
        path = os.path.join(store.path, name)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, name
    assert os.listdir(store.receipts_dir) == []
    store.put_manifest(chain(1)[0], NOW)
    for path in (
        os.path.join(store.trust_dir, "root-00000001.json"),
        manifest_path(store, UUID_A, 1),
    ):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert stat.S_IMODE(os.stat(os.path.join(store.vms_dir, UUID_A)).st_mode) == 0o700


def test_root_files_hold_canonical_envelopes(store):
    data = Path(store.trust_dir, "root-00000001.json").read_bytes()
    assert data == dsse.envelope_to_bytes(ROOT_V1)
    assert store.root(NOW).version == 1


def test_put_root_again_unchanged(store):
    before = snapshot(store.path)
    assert store.put_root(ROOT_V1, NOW) is False
    assert snapshot(store.path) == before


def test_first_root_must_be_version_one(tmp_path):
    store = Store(str(tmp_path / "other"))
    v2 = trust_root.rotate(ROOT_V1, KEYS, NEW_KEYS, 2, issued_at=NOW, expires=NOW + DAY)
    with pytest.raises(VerificationError, match="the first one must be version 1, found version 2"):
        store.put_root(v2, NOW)
    assert not os.path.exists(os.path.join(store.trust_dir, "root-00000002.json"))


def test_root_rotation_then_rollback_refused(store):
    v2 = trust_root.rotate(ROOT_V1, KEYS[:2], NEW_KEYS, 2, issued_at=NOW - DAY, expires=NOW + 365 * DAY)
    assert store.put_root(v2, NOW) is True
    assert store.root(NOW).version == 2
    assert store.put_root(ROOT_V1, NOW) is False  # already stored: nothing to do
    other_v1 = trust_root.new_root(NEW_KEYS, 1, issued_at=NOW - DAY, expires=NOW + DAY)
    with pytest.raises(VerificationError, match="^trust-root rollback"):
        store.put_root(other_v1, NOW)


def test_root_rotation_signed_by_new_keys_only_refused(store):
    v2 = trust_root.rotate(ROOT_V1, [], NEW_KEYS, 2, issued_at=NOW - DAY, expires=NOW + 365 * DAY)
    before = snapshot(store.path)
    with pytest.raises(VerificationError, match="keys of trusted version 1"):
        store.put_root(v2, NOW)
    assert snapshot(store.path) == before


def test_manifests_after_rotation_need_the_new_keys(store):
    v2 = trust_root.rotate(ROOT_V1, KEYS[:2], NEW_KEYS, 2, issued_at=NOW - DAY, expires=NOW + 365 * DAY)
    store.put_root(v2, NOW)
    with pytest.raises(VerificationError, match="trust root version 2"):
        store.put_manifest(signed(statement(), 1, None, signers=KEYS), NOW)
    assert store.put_manifest(signed(statement(), 1, None, signers=NEW_KEYS), NOW) is True


def test_store_without_trust_root_refuses_manifests(tmp_path):
    store = Store(str(tmp_path / "empty"))
    store.init()
    with pytest.raises(VerificationError, match="no trust root"):
        store.put_manifest(chain(1)[0], NOW)


def test_tampered_root_file_named(store):
    path = os.path.join(store.trust_dir, "root-00000001.json")
    os.chmod(path, 0o600)
    Path(path).write_bytes(Path(path).read_bytes().replace(b'"payloadType"', b'"payloadtype"'))
    with pytest.raises(FormatError, match="root-00000001.json"):
        store.root(NOW)


# ---------------------------------------------------------------- manifest chains


def test_append_chain_v1_v2_v3(store):
    envelopes = chain(3)
    assert store.latest(UUID_A) is None
    assert store.floor(UUID_A) is None
    for index, envelope in enumerate(envelopes, start=1):
        assert store.put_manifest(envelope, NOW) is True
        latest_envelope, latest = store.latest(UUID_A)
        assert latest_envelope == envelope
        assert latest.version == index
        assert store.floor(UUID_A) == ManifestRef(index, envelope_digest(envelope), False)
    assert [m.version for m in store.history(UUID_A)] == [1, 2, 3]
    assert Path(manifest_path(store, UUID_A, 3)).read_bytes() == dsse.envelope_to_bytes(envelopes[2])


def test_idempotent_re_put(store):
    envelopes = chain(2)
    for envelope in envelopes:
        store.put_manifest(envelope, NOW)
    before = snapshot(store.path)
    assert store.put_manifest(envelopes[1], NOW) is False
    assert store.put_manifest(envelopes[0], NOW) is False
    assert snapshot(store.path) == before


def test_fork_refused_loudly_and_nothing_written(store):
    v1, v2 = chain(2)
    store.put_manifest(v1, NOW)
    store.put_manifest(v2, NOW)
    other_v2 = signed(statement(blob_sha="ee" * 32), 2, v1)
    before = snapshot(store.path)
    with pytest.raises(ForkError, match=r"^fork: manifest version 2 of VM 100 .* claim the same version"):
        store.put_manifest(other_v2, NOW)
    # An older version with other content is a fork of that version, too.
    other_v1 = signed(statement(blob_sha="ee" * 32), 1, None)
    with pytest.raises(ForkError, match="^fork: manifest version 1"):
        store.put_manifest(other_v1, NOW)
    assert snapshot(store.path) == before
    assert issubclass(ForkError, VerificationError)


def test_version_gap_refused(store):
    v1, v2, v3 = chain(3)
    store.put_manifest(v1, NOW)
    before = snapshot(store.path)
    with pytest.raises(VerificationError, match="version gap: .* the next manifest must be version 2, found 3"):
        store.put_manifest(v3, NOW)
    assert snapshot(store.path) == before
    first_at_two = signed(statement(uuid=UUID_B), 2, v2)
    with pytest.raises(VerificationError, match="must be version 1, found 2"):
        store.put_manifest(first_at_two, NOW)


def test_wrong_prev_refused(store):
    v1, v2 = chain(2)
    store.put_manifest(v1, NOW)
    unlinked = signed(statement(blob_sha="ee" * 32), 2, "ff" * 32)
    before = snapshot(store.path)
    with pytest.raises(VerificationError, match="does not extend the stored chain: its prev is ffff"):
        store.put_manifest(unlinked, NOW)
    assert snapshot(store.path) == before
    assert store.put_manifest(v2, NOW) is True


def test_tombstone_ends_chain(store):
    v1, v2 = chain(2)
    store.put_manifest(v1, NOW)
    store.put_manifest(v2, NOW)
    prior = payload.parse_manifest(v2.payload, "v2")
    tombstone = signed(payload.tombstone_statement(prior), 3, v2)
    assert store.put_manifest(tombstone, NOW) is True
    assert store.floor(UUID_A).destroyed is True
    assert store.latest(UUID_A)[1].state == "destroyed"
    assert store.put_manifest(tombstone, NOW) is False
    revived = signed(statement(), 4, tombstone)
    before = snapshot(store.path)
    with pytest.raises(VerificationError, match=r"^decommissioned: VM 100 .*tombstone at version 3"):
        store.put_manifest(revived, NOW)
    assert snapshot(store.path) == before


def test_unsigned_or_expired_manifest_not_stored(store):
    before = snapshot(store.path)
    with pytest.raises(VerificationError, match="1 of 2 required signatures"):
        store.put_manifest(signed(statement(), 1, None, signers=KEYS[:1]), NOW)
    with pytest.raises(VerificationError, match="expired"):
        store.put_manifest(signed(statement(), 1, None, expires=NOW), NOW)
    assert snapshot(store.path) == before


def test_history_and_find(store):
    for envelope in chain(2):
        store.put_manifest(envelope, NOW)
    # VMID 100 was reused by a new VM (other uuid); VMID 101 also exists.
    store.put_manifest(signed(statement(vmid=100, uuid=UUID_B), 1, None), NOW)
    third = "11111111-2222-4333-8444-555555555555"
    store.put_manifest(signed(statement(vmid=101, uuid=third), 1, None), NOW)
    assert store.find(100) == sorted([UUID_A, UUID_B])
    assert store.find(101) == [third]
    assert store.find(102) == []
    assert [m.subject.vmid for m in store.history(UUID_B)] == [100]
    assert store.history("99999999-8888-4777-8666-555555555555") == []


# ---------------------------------------------------------------- damage


def test_corrupt_store_file_named(store):
    v1, v2, v3 = chain(3)
    store.put_manifest(v1, NOW)
    store.put_manifest(v2, NOW)
    path = manifest_path(store, UUID_A, 2)
    Path(path).write_bytes(Path(path).read_bytes()[:-1])
    before = snapshot(store.path)
    with pytest.raises(FormatError, match="manifest-00000002.json"):
        store.put_manifest(v3, NOW)
    with pytest.raises(FormatError, match="manifest-00000002.json"):
        store.latest(UUID_A)
    assert snapshot(store.path) == before


def test_replaced_store_file_breaks_the_chain(store):
    v1, v2, v3 = chain(3)
    for envelope in (v1, v2, v3):
        store.put_manifest(envelope, NOW)
    # A validly signed but different version 2 put in place by hand.
    Path(manifest_path(store, UUID_A, 2)).write_bytes(
        dsse.envelope_to_bytes(signed(statement(blob_sha="ee" * 32), 2, v1))
    )
    with pytest.raises(FormatError, match="manifest-00000003.json does not link to version 2"):
        store.history(UUID_A)


def test_missing_store_file_named(store):
    for envelope in chain(2):
        store.put_manifest(envelope, NOW)
    os.unlink(manifest_path(store, UUID_A, 1))
    with pytest.raises(FormatError, match="manifest-00000001.json is missing"):
        store.floor(UUID_A)


def test_misnamed_store_file_named(store):
    (v1,) = chain(1)
    store.put_manifest(v1, NOW)
    os.rename(manifest_path(store, UUID_A, 1), os.path.join(store.vms_dir, UUID_A, "manifest-1.json"))
    with pytest.raises(FormatError, match="unexpected file .*manifest-1.json"):
        store.latest(UUID_A)
    Path(store.vms_dir, "notes").mkdir()
    with pytest.raises(FormatError, match="unexpected entry .*notes"):
        store.find(100)


def test_manifest_under_the_wrong_vm_named(store):
    (v1,) = chain(1)
    other = os.path.join(store.vms_dir, UUID_B)
    os.mkdir(other, 0o700)
    Path(other, "manifest-00000001.json").write_bytes(dsse.envelope_to_bytes(v1))
    with pytest.raises(FormatError, match=rf"{UUID_B}/manifest-00000001.json holds version 1 of VM {UUID_A}"):
        store.history(UUID_B)


def test_tmp_files_of_an_interrupted_write_ignored(store):
    (v1,) = chain(1)
    store.put_manifest(v1, NOW)
    Path(store.vms_dir, UUID_A, ".tmp-abc").write_bytes(b"partial")
    assert store.latest(UUID_A)[0] == v1


# ---------------------------------------------------------------- node records


def _record(name: str, srk_name: str = NODE_ID) -> NodeRecord:
    return NodeRecord(
        node=name,
        backend="software",
        srk_name=srk_name,
        srk_public="AAAA",
        epoch_nv_index="0x01c10000",
        epoch_nv_name=NODE_ID,
        enrolled_at="2030-05-01T00:00:00Z",
    )


def _signed_record(name: str, signers=KEYS[:2], **fields) -> dsse.Envelope:
    return dsse.sign(_record(name, **fields).to_bytes(), NODE_PAYLOAD_TYPE, signers)


def test_node_records(store):
    for name in ("node-b", "node-a"):
        assert store.put_node(_signed_record(name))
    assert not store.put_node(_signed_record("node-a"))  # the same record again changes nothing
    assert store.list_nodes() == ["node-a", "node-b"]
    # The store hands out the record as stored; the controller checks it (_authority/node_record.py).
    assert store.read_node("node-a") == dsse.envelope_to_dict(_signed_record("node-a"))
    assert store.read_node("node-c") is None
    with pytest.raises(InputError, match="node name"):
        store.read_node("../trust/root-00000001")
    Path(store.nodes_dir, "node-d.json").write_text("{")
    with pytest.raises(FormatError, match="node-d.json is not valid JSON"):
        store.read_node("node-d")


def test_put_node_refuses_an_old_unsigned_record(store):
    old = {"format": "ironclaw-node-record/1", "node": "node-a"}
    with pytest.raises(FormatError):
        store.put_node(dsse.Envelope(canonical.dumps(old), NODE_PAYLOAD_TYPE, ()))
    assert not Path(store.nodes_dir, "node-a.json").exists()
