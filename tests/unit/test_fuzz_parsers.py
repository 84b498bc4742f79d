# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fuzz smoke: every parser of a stored or signed document, fed seeded mutations of valid samples.

The property: a parser either returns or raises an error of the collection's hierarchy (IronclawError);
any other exception (KeyError, TypeError, RecursionError, OverflowError...) is a crash a damaged or hostile
file could cause. Where a parser has a writer, what it accepts must also be that writer's one byte form.

The seed is printed at the start; ``IRONCLAW_FUZZ_SEED=<n>`` runs the same cases again and
``IRONCLAW_FUZZ_CASES=<n>`` changes the number of cases per parser (default 10,000).
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from fuzz_mutations import Mutator

from ansible_collections.ironclaw.sealed.plugins.module_utils._attest import quote, tpm_public
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority import journal
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import IronclawError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import approval, blob, bundle, canonical, grant
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import keyslot as keyslot_format
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import cache, dsse, payload, trust_root
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import ManifestRef
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy import keyname
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.spec import parse_policy
from ansible_collections.ironclaw.sealed.plugins.module_utils._store import head as store_head
from ansible_collections.ironclaw.sealed.plugins.module_utils._store import lock as store_lock
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import NodeRecord, parse_node_record
from rig import evidence

CASES = int(os.environ.get("IRONCLAW_FUZZ_CASES", "10000"))
SEED = int(os.environ.get("IRONCLAW_FUZZ_SEED") or int.from_bytes(os.urandom(4), "big"))
REPRODUCE = f"IRONCLAW_FUZZ_SEED={SEED} pytest tests/unit/test_fuzz_parsers.py"

VRK = bytes(range(32))
VMID = 100
UUID = "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"
KEYSLOT_ID = "00112233445566778899aabbccddeeff"
CREATED = "2025-01-02T03:04:05Z"
LATER = "2025-02-02T03:04:05Z"
NOW = datetime(2025, 1, 10, tzinfo=UTC)
SRK_NAME = b"\x00\x0b" + hashlib.sha256(b"node-a SRK").digest()
OTHER_SRK_NAME = b"\x00\x0b" + hashlib.sha256(b"node-b SRK").digest()
ROOT_KEYS = [ed25519.Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in (1, 2)]
HEAD_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)
POLICY_KEY = ec.derive_private_key(0x1C0FFEE, ec.SECP256R1())
POLICY_PUBLIC = keyname.policy_key_public(POLICY_KEY.public_key())
POLICY_NAME = keyname.name_of_public_area(POLICY_PUBLIC[2:])


# ---------------------------------------------------------------- valid samples


def _blob(name: str, plaintext: bytes) -> bytes:
    return blob.encrypt_blob(
        VRK,
        vmid=VMID,
        vm_uuid=UUID,
        name=name,
        keyslot_id=KEYSLOT_ID,
        generation=3,
        plaintext=plaintext,
        blob_id=bytes(range(16)),
        nonce=bytes(range(12)),
        created=CREATED,
    )


def _keyslots() -> list[bytes]:
    common = dict(
        vmid=VMID,
        vm_uuid=UUID,
        keyslot_id=KEYSLOT_ID,
        created=CREATED,
        migratable=True,
        node_name=SRK_NAME,
        policy_key_name=POLICY_NAME,
        policy_key_public=POLICY_PUBLIC,
    )
    return [
        keyslot_format.Keyslot(
            sealed=keyslot_format.Tpm2Sealed(public=b"\x00\x4e" + b"p" * 78, private=b"q" * 64), **common
        ).to_bytes(),
        keyslot_format.Keyslot(
            sealed=keyslot_format.SoftwareSealed(kek_version=2, wrapped=b"w" * 40), **common
        ).to_bytes(),
    ]


def _approvals() -> list[bytes]:
    common = dict(
        vmid=VMID,
        vm_uuid=UUID,
        node_name=SRK_NAME,
        epoch=4,
        approved_policy=bytes(32),
        key_name=POLICY_NAME,
        signature_r=b"r" * 32,
        signature_s=b"s" * 32,
        issued_at=CREATED,
    )
    return [
        approval.Approval(pcrs=None, **common).to_bytes(),
        approval.Approval(pcrs=approval.PcrBinding("sha1:0+sha256:0,7,16", b"d" * 32), **common).to_bytes(),
    ]


def _grant() -> bytes:
    return grant.Grant(
        vmid=VMID,
        vm_uuid=UUID,
        source_name=SRK_NAME,
        epoch=2,
        target_name=OTHER_SRK_NAME,
        target_public=b"t" * 90,
        approved_policy=bytes(32),
        key_name=POLICY_NAME,
        signature_r=b"r" * 32,
        signature_s=b"s" * 32,
        issued_at=CREATED,
    ).to_bytes()


def _bundle() -> bytes:
    return bundle.Bundle(
        vmid=VMID,
        vm_uuid=UUID,
        keyslot_id=KEYSLOT_ID,
        backend="tpm2",
        source_name=SRK_NAME,
        target_name=OTHER_SRK_NAME,
        created=CREATED,
        policy_key_name=POLICY_NAME,
        policy_key_public=POLICY_PUBLIC,
        keyslot={"public": b"p" * 80, "duplicate": b"d" * 60, "seed": b"s" * 40},
        blobs=(("api-token", _blob("api-token", b"t" * 8)), ("db-password", _blob("db-password", b"p" * 12))),
        manifest_version=2,
        manifest_digest="ab" * 32,
        migration_source="pve1",
        migration_target="pve2",
        not_after=LATER,
    ).to_bytes()


def _manifests() -> list[bytes]:
    statement = {
        "subject": {"vmid": VMID, "vm_uuid": UUID, "vm_ctime": 1700000000, "cluster": "lab"},
        "node": {"name": "pve1", "id": SRK_NAME.hex()},
        "keyslot": {"name": "keyslot.json", "sha256": "11" * 32, "keyslot_id": KEYSLOT_ID},
        "blobs": [
            {"name": "api-token", "sha256": "22" * 32, "size": 8, "generation": 1},
            {"name": "db-password", "sha256": "33" * 32, "size": 12, "generation": 3},
        ],
        "state": "active",
        "policy": {"migratable": True, "pcrs": "sha256:0,7"},
    }
    times = dict(issued_at=NOW, expires=NOW + timedelta(days=30), manifest_id="44" * 16)
    first = payload.new_manifest(statement, version=1, prev=None, **times)
    moving = dict(statement, migration={"source": "pve1", "target": "pve2", "not_after": LATER})
    second = payload.new_manifest(moving, version=2, prev="55" * 32, **times)
    tomb = payload.new_manifest(payload.tombstone_statement(second), version=3, prev="66" * 32, **times)
    return [m.to_bytes() for m in (first, second, tomb)]


def _root_envelope() -> dsse.Envelope:
    return trust_root.new_root(
        ROOT_KEYS, 2, issued_at=NOW - timedelta(days=1), expires=NOW + timedelta(days=365), head_keys=[HEAD_KEY]
    )


def _head() -> bytes:
    view = store_head.StoreView(
        vms={UUID: ManifestRef(2, "77" * 32)},
        files={
            "nodes/pve1.json": "88" * 32,
            "trust/root-00000001.json": "99" * 32,
            f"receipts/{UUID}-0003.json": "aa" * 32,
        },
    )
    return store_head.head_payload(5, CREATED, view)


def _node_record() -> bytes:
    srk_public = canonical.b64encode(b"\x00\x4e" + b"k" * 78)
    return NodeRecord(
        node="pve1",
        backend="tpm2",
        srk_name=SRK_NAME.hex(),
        srk_public=srk_public,
        epoch_nv_index="0x01c10000",
        epoch_nv_name="000b" + "12" * 32,
        enrolled_at=CREATED,
        attestation=evidence.attestation(SRK_NAME.hex(), srk_public),
    ).to_bytes()


def _lock_record() -> bytes:
    holder = store_lock.Holder("0123456789abcdef", "migrate.yml", "ctl", "ops", 4242, 99, "boot/ns")
    return store_lock.Record("vm-" + UUID, holder, CREATED, LATER).to_bytes()


def _journal_entry() -> bytes:
    return canonical.dumps(
        journal.GrantedMove(
            vmid=VMID,
            vm_uuid=UUID,
            source_name="pve1",
            source_id=SRK_NAME.hex(),
            target_name="pve2",
            target_id=OTHER_SRK_NAME.hex(),
            manifest_version=2,
            manifest_digest="ab" * 32,
            not_after=LATER,
            issued_at=CREATED,
        ).to_dict()
    )


def _rsa_public() -> bytes:
    area = struct.pack(">HHI", tpm_public.ALG_RSA, 0x000B, 0x00030072) + struct.pack(">H", 0)
    area += struct.pack(">HHH", tpm_public.ALG_AES, 128, tpm_public.ALG_CFB) + struct.pack(">H", tpm_public.ALG_NULL)
    area += struct.pack(">HI", 2048, 0) + struct.pack(">H", 256) + b"n" * 256
    return struct.pack(">H", len(area)) + area


def _quote_attest() -> bytes:
    selection = PcrSelection.parse("sha256:0,7").marshal()
    body = struct.pack(">IH", quote.TPM_GENERATED, quote.ST_ATTEST_QUOTE)
    body += struct.pack(">H", 34) + SRK_NAME + struct.pack(">H", 16) + b"n" * 16
    body += struct.pack(">QIIB", 123456, 1, 2, 1) + bytes(8)
    return body + selection + struct.pack(">H", 32) + b"g" * 32


# ---------------------------------------------------------------- parsers under test


def _roundtrip(parsed, data: bytes) -> None:
    """What a parser accepts is its writer's one byte form: else two files mean the same and hash differently."""
    written = parsed.to_bytes()
    assert written == data, f"accepted input is not the writer's byte form: {data[:200]!r} != {written[:200]!r}"


def _blob_parser(data: bytes):
    parsed = blob.parse_blob(data, "blob")
    _roundtrip(parsed.header, data[blob.LEN_PREFIX : len(parsed.aad)])
    return blob.decrypt_blob(VRK, parsed, "blob")


BLOB_SAMPLE = _blob("db-password", b"p" * 12)
BLOB_HEADER = blob.parse_blob(BLOB_SAMPLE, "blob").aad[blob.LEN_PREFIX :]


def _blob_with_header(header: bytes):
    """A blob around a mutated header (its length prefix right), so the header's field checks are reached."""
    rest = BLOB_SAMPLE[blob.LEN_PREFIX + len(BLOB_HEADER) :]
    return _blob_parser(len(header).to_bytes(blob.LEN_PREFIX, "big") + header + rest)


def _envelope_parser(data: bytes):
    envelope = dsse.parse_envelope(data, "envelope")
    assert dsse.envelope_to_bytes(envelope) == data
    return envelope


def _root_parser(data: bytes):
    # The whole load path: envelope, signatures against its own keys, payload, expiry.
    return trust_root.load_root(dsse.parse_envelope(data, "trust root"), "trust root", NOW)


def _pcr_text(text: str):
    selection = PcrSelection.parse(text)
    # What is accepted is plain ASCII that means what its canonical form means (no other scripts' digits).
    assert text.isascii() and "\n" not in text, f"PCR selection {text!r} accepted as {selection}"
    assert PcrSelection.parse(str(selection)) == selection
    return selection


def _pcr_canonical(text: str):
    return approval.parse_pcr_selection(text, "pcrs")


def _parse_and_roundtrip(parse):
    def run(data: bytes):
        parsed = parse(data)
        _roundtrip(parsed, data)
        return parsed

    return run


ROOT = _root_envelope()
MANIFESTS = _manifests()
PARSERS = {
    "canonical-json": (
        lambda data: canonical.loads(data, "doc"),
        [canonical.dumps({"a": [1, -2, "é", None, True], "b": {"c": ""}})],
    ),
    "blob": (_blob_parser, [BLOB_SAMPLE, _blob("empty", b"")]),
    "blob-header": (_blob_with_header, [BLOB_HEADER]),
    "keyslot": (_parse_and_roundtrip(lambda d: keyslot_format.parse_keyslot(d, "keyslot")), _keyslots()),
    "approval": (_parse_and_roundtrip(lambda d: approval.parse_approval(d, "approval")), _approvals()),
    "grant": (_parse_and_roundtrip(lambda d: grant.grant_from_dict(canonical.loads(d, "grant"), "grant")), [_grant()]),
    "bundle": (_parse_and_roundtrip(lambda d: bundle.parse_bundle(d, "bundle")), [_bundle()]),
    "dsse-envelope": (
        _envelope_parser,
        [
            dsse.envelope_to_bytes(ROOT),
            dsse.envelope_to_bytes(dsse.sign(MANIFESTS[0], payload.MANIFEST_PAYLOAD_TYPE, ROOT_KEYS)),
        ],
    ),
    "trust-root": (_root_parser, [dsse.envelope_to_bytes(ROOT)]),
    "trust-root-payload": (lambda d: trust_root.parse_root_payload(d, "trust root"), [ROOT.payload]),
    "manifest": (_parse_and_roundtrip(lambda d: payload.parse_manifest(d, "manifest")), MANIFESTS),
    "node-record": (_parse_and_roundtrip(lambda d: parse_node_record(d, "node record")), [_node_record()]),
    "store-head": (lambda d: store_head.parse_head(d, "store head"), [_head()]),
    "floor": (
        lambda d: cache.parse_floor(d, UUID, "floor"),
        [cache.floor_to_bytes(VMID, UUID, ManifestRef(2, "ab" * 32))],
    ),
    "lock-record": (lambda d: store_lock.parse_record(d, f"/locks/vm-{UUID}.json"), [_lock_record()]),
    "migration-journal": (lambda d: journal._parse(d, "journal"), [_journal_entry()]),
    "pcr-selection": (_pcr_text, ["sha256:0,7", "sha1:0+sha256:7,16", "sha384:23"]),
    "pcr-selection-canonical": (_pcr_canonical, ["sha256:0,7", "sha1:0+sha256:7,16+sha384:1"]),
    "policy-string": (parse_policy, ["migratable=true;pcrs=sha256:0,7", "migratable=no", "pcrs=sha1:0+sha256:16"]),
    "tpm2b-public": (lambda d: tpm_public.parse_tpm2b_public(d, "public"), [POLICY_PUBLIC, _rsa_public()]),
    "policy-key-public": (lambda d: keyname.parse_policy_key_public(d, "policy key"), [POLICY_PUBLIC]),
    "quote-attest": (lambda d: quote._parse_attest(d, "quote"), [_quote_attest()]),
}


@pytest.fixture(scope="module", autouse=True)
def _announce_seed(request):
    """Print the seed past pytest's output capture, so every run (passing too) shows how to repeat it."""
    line = f"\nfuzz smoke: seed {SEED}, {CASES} cases per parser (reproduce: {REPRODUCE})"
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        print(line)


def test_fuzz_samples_are_valid():
    """The samples themselves parse: else every mutation would test only the first refusal."""
    for parse, samples in PARSERS.values():
        for sample in samples:
            parse(sample)


def fuzz(name: str, parse, samples: list, cases: int, seed: int) -> list[str]:
    """Run ``cases`` mutations through ``parse``; returns one line per crash (at most 5)."""
    mutator = Mutator(seed ^ zlib.crc32(name.encode()))
    crashes = []
    for case in range(cases):
        sample = samples[case % len(samples)]
        data, how = mutator.mutate(sample, samples)
        try:
            parse(data)
        except IronclawError:
            continue
        except Exception as err:  # the property under test: nothing outside the hierarchy escapes
            crashes.append(f"case {case} ({how}): {type(err).__name__}: {str(err)[:200]} on input {data[:160]!r}")
            if len(crashes) >= 5:
                break
    return crashes


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_fuzz_parser_raises_only_collection_errors(name):
    parse, samples = PARSERS[name]
    start = time.monotonic()
    crashes = fuzz(name, parse, samples, CASES, SEED)
    elapsed = time.monotonic() - start
    assert not crashes, (
        f"{name}: {len(crashes)} crash(es) in {elapsed:.1f}s; reproduce: {REPRODUCE} -k {name}\n" + "\n".join(crashes)
    )
