# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Manifest verification on real sealed VM folders: one named test per attack, with an injected clock.

VMs are sealed by the engine on the software backend (the manifest only looks
at files, so the backend does not matter here).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
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
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.state import describe_vm
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import (
    ForkError,
    ManifestRef,
    envelope_digest,
    parse_ref,
    ref_of,
    verify_manifest,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import PolicyKeyStore, sign_approval
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)
VMID, UUID = 100, "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"
OTHER_VMID, OTHER_UUID = 101, "0f0e0d0c-0b0a-4909-8807-0605040302ab"
CLUSTER = "lab"
CTIME = 1_700_000_000
SECRETS = {"a": b"alpha", "big": os.urandom(4096), "c": b""}


def key(n: int):
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


KEYS = (key(1), key(2), key(3))
OUTSIDER = key(9)


def short(k) -> str:
    return dsse.keyid_of(dsse.raw_public(k))[:16]


@dataclasses.dataclass
class Lab:
    """A software-backend node with VMs 100 and 101 sealed, and a 2-of-3 trust root."""

    state_dir: str
    backend: object
    policy_keys: PolicyKeyStore
    node_id: bytes
    root: trust_root.TrustRoot

    def reseal(self, values: dict[str, bytes], vmid=VMID, uuid=UUID, approval=None) -> None:
        engine.seal(
            self.backend,
            self.vm(vmid, uuid),
            [engine.Secret(name, data) for name, data in values.items()],
            migratable=True,
            pcrs=None,
            policy_key_public=self.policy_keys.public(vmid, uuid)[0],
            approval=approval,
            check_mode=False,
        )

    def vm(self, vmid=VMID, uuid=UUID) -> VmDir:
        return VmDir(self.state_dir, vmid, uuid)

    def actual(self, vmid=VMID, uuid=UUID) -> dict:
        return describe_vm(self.state_dir, vmid, uuid)

    def manifest(self, vmid=VMID, uuid=UUID, *, version=1, prev=None, issued_at=NOW - DAY, **statement_changes):
        statement = payload.with_policy(
            payload.make_statement(
                self.actual(vmid, uuid),
                vmid=vmid,
                vm_uuid=uuid,
                vm_ctime=CTIME,
                cluster=CLUSTER,
                node_name="node-a",
                node_id=self.node_id,
            ),
            payload.RecordedPolicy(migratable=True, pcrs=None),
        )
        statement.update(statement_changes)
        return payload.new_manifest(statement, version=version, prev=prev, issued_at=issued_at, expires=NOW + 30 * DAY)

    def chain(self, length: int, signers=KEYS[:2]) -> list[dsse.Envelope]:
        envelopes, prev = [], None
        for version in range(1, length + 1):
            envelope = sign(self.manifest(version=version, prev=prev), signers)
            envelopes.append(envelope)
            prev = envelope_digest(envelope)
        return envelopes

    def verify(self, envelope, *, root=None, now=NOW, floor=None, expected=None, actual="live", **kwargs):
        return verify_manifest(
            envelope,
            root=root or self.root,
            now=now,
            floor=floor,
            expected=expected or {"vmid": VMID, "vm_uuid": UUID, "cluster": CLUSTER, "vm_ctime": CTIME},
            actual=self.actual() if actual == "live" else actual,
            **kwargs,
        )


def sign(manifest: payload.Manifest, signers) -> dsse.Envelope:
    return dsse.sign(manifest.to_bytes(), payload.MANIFEST_PAYLOAD_TYPE, signers)


@pytest.fixture
def lab(tmp_path):
    state_dir = str(tmp_path / "state")
    backend = open_backend("software", tcti=None, state_dir=state_dir)
    try:
        backend.provision()
        facts = backend.facts()
        root = trust_root.load_root(
            trust_root.new_root(KEYS, 2, issued_at=NOW - 10 * DAY, expires=NOW + 365 * DAY), "root", NOW
        )
        lab = Lab(state_dir, backend, PolicyKeyStore(str(tmp_path / "controller")), facts.node_name, root)
        for vmid, uuid in ((VMID, UUID), (OTHER_VMID, OTHER_UUID)):
            lab.policy_keys.create(vmid, uuid)
            approval = sign_approval(
                lab.policy_keys.load(vmid, uuid),
                vmid=vmid,
                vm_uuid=uuid,
                node_name=facts.node_name,
                epoch_nv_name=facts.epoch_nv_name,
                epoch=facts.epoch,
            )
            lab.reseal(SECRETS, vmid, uuid, approval)
        yield lab
    finally:
        backend.close()


# ---------------------------------------------------------------- happy paths


def test_happy_path_two_of_three(lab):
    envelope = sign(lab.manifest(), KEYS[1:])
    manifest = lab.verify(envelope)
    assert manifest.version == 1
    assert manifest.subject == payload.Subject(VMID, UUID, CTIME, CLUSTER)
    assert [(b.name, b.generation) for b in manifest.blobs] == [("a", 1), ("big", 1), ("c", 1)]
    assert manifest.keyslot.keyslot_id == lab.vm().keyslot().keyslot_id


def test_happy_path_one_of_one(lab):
    root = trust_root.load_root(trust_root.new_root([OUTSIDER], 1, issued_at=NOW - DAY, expires=NOW + DAY), "root", NOW)
    assert lab.verify(sign(lab.manifest(), [OUTSIDER]), root=root).version == 1


def test_happy_path_at_the_floor_and_above(lab):
    v1, v2 = lab.chain(2)
    assert lab.verify(v2, floor=ref_of(v1, payload.parse_manifest(v1.payload, "v1"))).version == 2
    assert lab.verify(v2, floor=ManifestRef(2, envelope_digest(v2))).version == 2


def test_describe_vm_matches_the_sealed_files(lab):
    described = lab.actual()
    vm = lab.vm()
    assert [b["name"] for b in described["blobs"]] == ["a", "big", "c"]
    for blob in described["blobs"]:
        assert blob["size"] == os.path.getsize(vm.blob_path(blob["name"]))
        assert blob["generation"] == 1
    assert described["keyslot"]["name"] == "keyslot.json"
    assert described["keyslot"]["keyslot_id"] == vm.keyslot().keyslot_id
    # approval.json, dot files and other names are not part of the sealed state.
    Path(vm.path, ".tmp-x.sealed").write_bytes(b"partial")
    Path(vm.path, "manifest.json").write_bytes(b"{}")
    assert lab.actual() == described


def test_describe_vm_without_a_folder(lab):
    assert describe_vm(lab.state_dir, 555, "11111111-2222-4333-8444-555555555555") == {"keyslot": None, "blobs": []}


def test_describe_vm_refuses_a_symlinked_blob(lab):
    vm = lab.vm()
    os.replace(vm.blob_path("a"), os.path.join(lab.state_dir, "elsewhere"))
    os.symlink(os.path.join(lab.state_dir, "elsewhere"), vm.blob_path("a"))
    with pytest.raises(FormatError, match="symlink"):
        lab.actual()


def test_describe_vm_refuses_a_truncated_blob(lab):
    path = lab.vm().blob_path("big")
    Path(path).write_bytes(Path(path).read_bytes()[:-1])
    with pytest.raises(FormatError, match=r"blob 'big' of VM 100 .*truncated"):
        lab.actual()


# ---------------------------------------------------------------- rule 1: type and signatures


def test_tampered_payload_byte(lab):
    envelope = sign(lab.manifest(), KEYS[:2])
    data = bytearray(envelope.payload)
    data[data.index(b'"vmid":100') + 8] ^= 0x01  # VMID 100 becomes 110: well-formed, but not what was signed
    tampered = dataclasses.replace(envelope, payload=bytes(data))
    with pytest.raises(
        VerificationError, match=r"0 of 2 required signatures: valid from \[\]; unknown keys \[\]; invalid"
    ):
        lab.verify(tampered)


def test_tampered_signature(lab):
    envelope = sign(lab.manifest(), KEYS[:2])
    first, second = envelope.signatures
    broken = dsse.Signature(first.keyid, first.sig[:10] + bytes([first.sig[10] ^ 1]) + first.sig[11:])
    tampered = dataclasses.replace(envelope, signatures=(broken, second))
    with pytest.raises(VerificationError, match=rf"1 of 2 required signatures: .*invalid \[{first.keyid[:16]}\]"):
        lab.verify(tampered)


def test_unknown_payload_type(lab):
    envelope = dsse.sign(lab.manifest().to_bytes(), "application/vnd.in-toto+json", KEYS)
    with pytest.raises(VerificationError, match=r"payloadType is 'application/vnd.in-toto\+json', expected"):
        lab.verify(envelope)


def test_trust_root_envelope_is_not_a_manifest(lab):
    with pytest.raises(VerificationError, match="payloadType is 'application/vnd.ironclaw.trust-root"):
        lab.verify(lab.root.envelope)


def test_threshold_not_met(lab):
    envelope = sign(lab.manifest(), KEYS[:1])
    with pytest.raises(VerificationError, match=rf"1 of 2 required signatures: valid from \[{short(KEYS[0])}\]"):
        lab.verify(envelope)


def test_same_key_counted_twice(lab):
    envelope = sign(lab.manifest(), KEYS[:1])
    (signature,) = envelope.signatures
    doubled = dataclasses.replace(envelope, signatures=(signature, signature))
    assert len(doubled.signatures) == 2
    with pytest.raises(VerificationError, match=r"1 of 2 required signatures"):
        lab.verify(doubled)
    # The same signature relabelled as another trusted key does not verify under that key.
    relabelled = dataclasses.replace(
        envelope, signatures=(signature, dsse.Signature(dsse.keyid_of(dsse.raw_public(KEYS[1])), signature.sig))
    )
    with pytest.raises(VerificationError, match=rf"1 of 2 required signatures: .*invalid \[{short(KEYS[1])}\]"):
        lab.verify(relabelled)


def test_signature_by_key_outside_trust_root(lab):
    envelope = sign(lab.manifest(), [KEYS[0], OUTSIDER])
    with pytest.raises(VerificationError, match=rf"1 of 2 required signatures: .*unknown keys \[{short(OUTSIDER)}\]"):
        lab.verify(envelope)
    # An outsider's signature is ignored, not counted against a threshold that is met.
    assert lab.verify(sign(lab.manifest(), [KEYS[0], KEYS[2], OUTSIDER])).version == 1


# ---------------------------------------------------------------- rule 2: time


def test_expired(lab):
    envelope = sign(lab.manifest(), KEYS[:2])
    with pytest.raises(VerificationError, match=r"expired at 2030-07-01T12:00:00Z \(now 2030-07-01T12:00:01Z\)"):
        lab.verify(envelope, now=NOW + 30 * DAY + timedelta(seconds=1))


def test_not_yet_valid_clock_far_off(lab):
    envelope = sign(lab.manifest(issued_at=NOW + timedelta(minutes=10)), KEYS[:2])
    with pytest.raises(VerificationError, match=r"not yet valid: issued at 2030-06-01T12:10:00Z.*clock"):
        lab.verify(envelope)
    # Within the allowed skew it is accepted.
    assert lab.verify(envelope, max_clock_skew=timedelta(minutes=15)).version == 1
    near = sign(lab.manifest(issued_at=NOW + timedelta(minutes=4)), KEYS[:2])
    assert lab.verify(near).version == 1


def test_naive_clock_refused(lab):
    with pytest.raises(InputError, match="timezone-aware"):
        lab.verify(sign(lab.manifest(), KEYS[:2]), now=NOW.replace(tzinfo=None))


# ---------------------------------------------------------------- rule 3: floor, fork, tombstone


def test_rollback_to_older_version(lab):
    v1, _v2, v3 = lab.chain(3)
    floor = ref_of(v3, payload.parse_manifest(v3.payload, "v3"))
    with pytest.raises(VerificationError, match=r"^rollback: .*rollback to version 1 while the floor is 3"):
        lab.verify(v1, floor=floor)


def test_fork_same_version_other_digest(lab):
    v1, v2 = lab.chain(2)
    other_v2 = sign(lab.manifest(version=2, prev=envelope_digest(v1)), KEYS[:2])
    assert other_v2 != v2
    with pytest.raises(ForkError, match=r"^fork: manifest version 2 of VM 100 .* claim the same version"):
        lab.verify(other_v2, floor=ManifestRef(2, envelope_digest(v2)))


def test_fork_by_other_signature_set_is_still_a_fork(lab):
    # The digest covers the signatures: the same payload signed by other keys is another envelope.
    manifest = lab.manifest()
    stored, other = sign(manifest, KEYS[:2]), sign(manifest, KEYS[1:])
    with pytest.raises(ForkError):
        lab.verify(other, floor=ManifestRef(1, envelope_digest(stored)))


def test_tombstoned_vm_presented_again(lab):
    v1, v2 = lab.chain(2)
    prior = payload.parse_manifest(v2.payload, "v2")
    tombstone = sign(
        payload.new_manifest(
            payload.tombstone_statement(prior),
            version=3,
            prev=envelope_digest(v2),
            issued_at=NOW - DAY,
            expires=NOW + DAY,
        ),
        KEYS[:2],
    )
    floor = ref_of(tombstone, payload.parse_manifest(tombstone.payload, "v3"))
    assert floor.destroyed is True
    # The old, still validly signed, manifest is refused once the VM is decommissioned...
    with pytest.raises(VerificationError, match=r"^decommissioned: VM 100 .*\(tombstone at version 3\)"):
        lab.verify(v1, floor=floor)
    # ...and so is the tombstone itself, with or without a floor.
    with pytest.raises(VerificationError, match=r"^decommissioned: VM 100 .*\(tombstone at version 3\)"):
        lab.verify(tombstone, floor=None, actual=None)


def test_parse_ref_round_trip():
    ref = ManifestRef(4, "ab" * 32, False)
    assert parse_ref(ref._asdict(), "floor") == ref
    with pytest.raises(FormatError, match="unknown field"):
        parse_ref({**ref._asdict(), "x": 1}, "floor")


# ---------------------------------------------------------------- rule 4: subject


def test_wrong_vmid(lab):
    envelope = sign(lab.manifest(OTHER_VMID, OTHER_UUID), KEYS[:2])
    with pytest.raises(VerificationError, match=r"is for VMID 101, not VMID 100"):
        lab.verify(envelope)


def test_wrong_vm_uuid_vmid_reused(lab):
    envelope = sign(lab.manifest(), KEYS[:2])
    new_uuid = "99999999-8888-4777-8666-555555555555"
    expected = {"vmid": VMID, "vm_uuid": new_uuid, "cluster": CLUSTER, "vm_ctime": None}
    with pytest.raises(VerificationError, match=rf"for VM uuid {UUID}, but VM 100 has uuid {new_uuid}: VMID reused\?"):
        lab.verify(envelope, expected=expected)


def test_wrong_cluster(lab):
    envelope = sign(lab.manifest(), KEYS[:2])
    expected = {"vmid": VMID, "vm_uuid": UUID, "cluster": "prod", "vm_ctime": CTIME}
    with pytest.raises(VerificationError, match=r"manifest for another cluster: it names cluster 'lab'.* 'prod'"):
        lab.verify(envelope, expected=expected)


def test_wrong_vm_ctime(lab):
    envelope = sign(lab.manifest(), KEYS[:2])
    expected = {"vmid": VMID, "vm_uuid": UUID, "cluster": CLUSTER, "vm_ctime": CTIME + 1}
    with pytest.raises(VerificationError, match=r"records VM creation time 1700000000, but VM 100 was created at"):
        lab.verify(envelope, expected=expected)
    # vm_ctime None in the expectation means: not checked.
    assert lab.verify(envelope, expected={**expected, "vm_ctime": None}).version == 1


# ---------------------------------------------------------------- rule 5: files


def test_swapped_blob_from_another_vm(lab):
    envelope = sign(lab.manifest(), KEYS[:2])
    shutil.copyfile(lab.vm(OTHER_VMID, OTHER_UUID).blob_path("a"), lab.vm().blob_path("a"))
    with pytest.raises(VerificationError, match=r"blob 'a' was swapped or altered \(sha256 "):
        lab.verify(envelope)


def test_older_copy_of_a_blob_restored(lab):
    old = Path(lab.vm().blob_path("a")).read_bytes()
    v1 = sign(lab.manifest(), KEYS[:2])
    lab.reseal({**SECRETS, "a": b"alpha, rotated"})
    v2 = sign(lab.manifest(version=2, prev=envelope_digest(v1)), KEYS[:2])
    assert [b.generation for b in payload.parse_manifest(v2.payload, "v2").blobs] == [2, 1, 1]
    assert lab.verify(v2).version == 2
    Path(lab.vm().blob_path("a")).write_bytes(old)  # restored from an old backup
    with pytest.raises(VerificationError, match=r"blob 'a' was swapped or altered"):
        lab.verify(v2)


def test_missing_blob(lab):
    envelope = sign(lab.manifest(), KEYS[:2])
    os.unlink(lab.vm().blob_path("big"))
    with pytest.raises(VerificationError, match=r"does not match manifest version 1 .*: blob 'big' is missing"):
        lab.verify(envelope)


def test_extra_blob(lab):
    envelope = sign(lab.manifest(), KEYS[:2])
    shutil.copyfile(lab.vm(OTHER_VMID, OTHER_UUID).blob_path("a"), os.path.join(lab.vm().path, "planted.sealed"))
    with pytest.raises(VerificationError, match=r"extra blob 'planted' is not in the manifest"):
        lab.verify(envelope)


def test_keyslot_swapped(lab):
    envelope = sign(lab.manifest(), KEYS[:2])
    shutil.copyfile(lab.vm(OTHER_VMID, OTHER_UUID).keyslot_path, lab.vm().keyslot_path)
    with pytest.raises(VerificationError, match=r"keyslot.json differs from the manifest .*swapped or altered"):
        lab.verify(envelope)


def test_keyslot_missing(lab):
    envelope = sign(lab.manifest(), KEYS[:2])
    os.unlink(lab.vm().keyslot_path)
    with pytest.raises(VerificationError, match=r"keyslot.json is missing"):
        lab.verify(envelope)


def test_every_difference_is_named(lab):
    envelope = sign(lab.manifest(), KEYS[:2])
    os.unlink(lab.vm().blob_path("c"))
    shutil.copyfile(lab.vm(OTHER_VMID, OTHER_UUID).blob_path("a"), lab.vm().blob_path("a"))
    with pytest.raises(VerificationError) as err:
        lab.verify(envelope)
    assert "blob 'c' is missing" in str(err.value)
    assert "blob 'a' was swapped" in str(err.value)
    assert "big" not in str(err.value)


# ---------------------------------------------------------------- strict formats


def test_envelope_round_trip_and_trailing_bytes(lab):
    envelope = sign(lab.manifest(), KEYS)
    data = dsse.envelope_to_bytes(envelope)
    assert dsse.parse_envelope(data, "envelope") == envelope
    assert dsse.parse_envelope(canonical.loads(data, "envelope"), "envelope") == envelope
    with pytest.raises(FormatError, match="not canonical"):
        dsse.parse_envelope(data + b"\n", "envelope")
    with pytest.raises(FormatError, match="not canonical"):
        dsse.parse_envelope(data.replace(b'"payloadType":', b'"payloadType": '), "envelope")


def test_envelope_signatures_sorted_in_canonical_form(lab):
    envelope = sign(lab.manifest(), KEYS)
    doc = dsse.envelope_to_dict(envelope)
    doc["signatures"].reverse()
    with pytest.raises(FormatError, match="signatures must be sorted"):
        dsse.parse_envelope(canonical.dumps(doc), "envelope")
    # A decoded object (e.g. a module option) may list them in any order.
    assert dsse.parse_envelope(doc, "envelope") == envelope


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(signatures=[]), "1 to 64 signatures, found 0"),
        (lambda d: d["signatures"][0].update(keyid="AB" * 32), "64 lowercase hex"),
        (lambda d: d["signatures"][0].update(sig=canonical.b64encode(b"x" * 63)), "exactly 64 bytes"),
        (lambda d: d.update(extra=1), "unknown field"),
        (lambda d: d.pop("payloadType"), "missing required field"),
        (lambda d: d.update(payload="not base64!"), "malformed base64"),
    ],
    ids=["no-signatures", "keyid-uppercase", "short-sig", "unknown-field", "no-type", "bad-payload"],
)
def test_envelope_strict(lab, change, message):
    doc = dsse.envelope_to_dict(sign(lab.manifest(), KEYS[:1]))
    change(doc)
    with pytest.raises(FormatError, match=message):
        dsse.parse_envelope(canonical.dumps(doc), "envelope")


def test_manifest_round_trip_and_statement(lab):
    manifest = lab.manifest()
    assert payload.parse_manifest(manifest.to_bytes(), "m") == manifest
    statement = payload.statement_of(manifest)
    assert set(statement) == {"subject", "node", "keyslot", "blobs", "state", "policy"}
    assert payload.check_statement(statement) == statement
    # A re-issued manifest of the same state has the same statement; a re-seal changes it.
    assert payload.statement_of(lab.manifest(version=2, prev="00" * 32)) == statement


def test_manifest_migration_is_optional_but_exact(lab):
    migration = {"source": "node-a", "target": "node-b", "not_after": "2030-06-02T00:00:00Z"}
    manifest = lab.manifest(migration=migration)
    assert manifest.migration == payload.Migration("node-a", "node-b", "2030-06-02T00:00:00Z")
    assert payload.statement_of(manifest)["migration"] == migration
    with pytest.raises(FormatError, match="unknown field"):
        lab.manifest(migration={**migration, "extra": 1})
    with pytest.raises(FormatError, match="must be object, found null"):
        lab.manifest(migration=None)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": 2}, "'prev' must be null exactly for version 1"),
        ({"prev": "00" * 32}, "'prev' must be null exactly for version 1"),
        ({"state": "paused"}, "'state' must be 'active' or 'destroyed'"),
        ({"keyslot": None}, "an active manifest needs its keyslot"),
        ({"state": "destroyed"}, "tombstone must have keyslot null"),
        ({"manifest_id": "00" * 15}, "exactly 16 bytes"),
        ({"expires": "2030-01-01T00:00:00Z"}, "must be later than 'issued_at'"),
        ({"subject": {"vmid": 100, "vm_uuid": UUID, "vm_ctime": -1, "cluster": "lab"}}, "vm_ctime' must be from 0"),
        ({"subject": {"vmid": 100, "vm_uuid": UUID, "vm_ctime": None, "cluster": "a/b"}}, "cluster name"),
        ({"subject": {"vmid": 100, "vm_uuid": UUID.upper(), "vm_ctime": None, "cluster": "x"}}, "must be written as"),
    ],
    ids=[
        "v2-no-prev",
        "v1-with-prev",
        "state",
        "active-no-keyslot",
        "destroyed-with-files",
        "id",
        "expires",
        "ctime",
        "cluster",
        "uuid-case",
    ],
)
def test_manifest_payload_strict(lab, changes, message):
    doc = lab.manifest().to_dict()
    doc.update(changes)
    with pytest.raises(FormatError, match=message):
        payload.parse_manifest(canonical.dumps(doc), "manifest")


def test_manifest_blobs_sorted_and_unique(lab):
    doc = lab.manifest().to_dict()
    doc["blobs"] = list(reversed(doc["blobs"]))
    with pytest.raises(FormatError, match="not sorted by name"):
        payload.parse_manifest(canonical.dumps(doc), "manifest")
    doc["blobs"] = [doc["blobs"][0], doc["blobs"][0]]
    with pytest.raises(FormatError, match="listed twice"):
        payload.parse_manifest(canonical.dumps(doc), "manifest")


def test_tombstone_shape(lab):
    tombstone = payload.new_manifest(
        payload.tombstone_statement(lab.manifest()), version=2, prev="11" * 32, issued_at=NOW, expires=NOW + DAY
    )
    assert tombstone.destroyed
    assert tombstone.keyslot is None
    assert tombstone.blobs == ()
    assert tombstone.subject.vm_uuid == UUID
