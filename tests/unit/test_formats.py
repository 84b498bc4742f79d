# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The on-disk formats: canonical JSON, sealed blob, keyslot, approval. One test per fault."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    FormatError,
    InputError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto import aead
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.hkdf import hkdf_sha256
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import approval, blob, canonical, keyslot

VRK = bytes(range(32))
OTHER_VRK = bytes(range(1, 33))
VMID = 100
UUID = "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"
OTHER_UUID = "0f0e0d0c-0b0a-4909-8807-0605040302ab"
KEYSLOT_ID = "00112233445566778899aabbccddeeff"
BLOB_ID = bytes(range(16))
NONCE = bytes(range(12))
CREATED = "2025-01-02T03:04:05Z"
SECRET = b"s3cr3t-value"
NODE_NAME = b"\x00\x0b" + hashlib.sha256(b"node-a SRK").digest()
KEY_NAME = b"\x00\x0b" + hashlib.sha256(b"vm policy key").digest()


def _dumps_loose(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------- canonical JSON


def test_canonical_dumps_is_sorted_compact_utf8():
    assert canonical.dumps({"b": 1, "a": ["é", None, True]}) == '{"a":["é",null,true],"b":1}'.encode()


def test_canonical_dumps_refuses_floats():
    with pytest.raises(FormatError, match="float"):
        canonical.dumps({"a": [1.0]})


def test_canonical_dumps_refuses_non_string_keys():
    with pytest.raises(FormatError, match="not a string"):
        canonical.dumps({1: 2})


def test_canonical_loads_round_trip():
    data = '{"a":{"b":[1,-2,"\\"\\\\\\n\\u0001é"]},"z":null}'.encode()
    assert canonical.loads(data, "doc") == {"a": {"b": [1, -2, '"\\\n\x01é']}, "z": None}


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1}',
        b'{"b":1,"a":2}',
        b'{"a":1}\n',
        b' {"a":1}',
        b'{"a":"\\u0041"}',
        b'{"a":"\\u00e9"}',
        b'{"a":-0}',
        b'{"a":"\\/"}',
    ],
    ids=["space", "reordered", "trailing-newline", "leading-space", "escaped-ascii", "escaped-non-ascii", "-0", "\\/"],
)
def test_canonical_loads_refuses_non_canonical_input(data):
    with pytest.raises(FormatError, match="doc: JSON is not canonical"):
        canonical.loads(data, "doc")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a":1,"a":1}', "duplicate key 'a'"),
        (b'{"a":{"b":1,"b":2}}', "duplicate key 'b'"),
        (b'{"a":1.0}', "floats are not allowed"),
        (b'{"a":1e3}', "floats are not allowed"),
        (b'{"a":NaN}', "NaN is not allowed"),
        (b'{"a":-Infinity}', "-Infinity is not allowed"),
        (b"[1]", "expected a JSON object, found array"),
        (b'"a"', "expected a JSON object, found string"),
        (b'{"a":"\xff"}', "not valid UTF-8 at byte 6"),
        (b'\xef\xbb\xbf{"a":1}', "not valid JSON"),
        (b'{"a":"\\ud800"}', "lone surrogate"),
        (b'{"a":1}{}', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON|nested too deeply"),
    ],
)
def test_canonical_loads_refuses_malformed_json(data, message):
    with pytest.raises(FormatError, match=message):
        canonical.loads(data, "doc")


@pytest.mark.parametrize(("text", "length"), [("", None), ("AA==", 1), ("AAE=", 2), ("AAEC", 3), ("/+8=", None)])
def test_b64decode_accepts_canonical_base64(text, length):
    assert canonical.b64encode(canonical.b64decode(text, "field", length)) == text


@pytest.mark.parametrize(
    ("text", "length", "message"),
    [
        ("AA", None, "malformed"),
        ("AA=", None, "malformed"),
        ("AB==", None, "non-canonical"),
        ("AA==\n", None, "malformed"),
        ("AA ==", None, "malformed"),
        ("_-8=", None, "malformed"),
        ("AAÉ=", None, "malformed"),
        ("AAEC", 4, "found 3 bytes"),
        (b"AAEC", None, "found bytes"),
        (None, None, "found null"),
    ],
)
def test_b64decode_is_strict(text, length, message):
    with pytest.raises(FormatError, match=message):
        canonical.b64decode(text, "field", length)


@pytest.mark.parametrize(
    ("text", "length", "message"),
    [
        ("AB", None, "lowercase hex"),
        ("abc", None, "lowercase hex"),
        ("ab cd", None, "lowercase hex"),
        ("abcd", 3, "found 2 bytes"),
        (1, None, "found integer"),
    ],
)
def test_hex_bytes_is_strict(text, length, message):
    with pytest.raises(FormatError, match=message):
        canonical.hex_bytes(text, "field", length)


def test_tpm_name_requires_sha256_name_algorithm():
    assert canonical.tpm_name(NODE_NAME.hex(), "name") == NODE_NAME
    with pytest.raises(FormatError, match="starting with 000b"):
        canonical.tpm_name(("000c" + NODE_NAME[2:].hex()), "name")
    with pytest.raises(FormatError, match="found 33 bytes"):
        canonical.tpm_name(NODE_NAME[:-1].hex(), "name")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"n": 1}, "missing required field\\(s\\) 's'"),
        ({"n": 1, "s": "x", "extra": 0}, "unknown field\\(s\\) 'extra'"),
        ({"n": True, "s": "x"}, "field 'n' must be integer, found boolean"),
        ({"n": "1", "s": "x"}, "field 'n' must be integer, found string"),
        ({"n": 1.0, "s": "x"}, "field 'n' must be integer, found float"),
        ({"n": 1, "s": None}, "field 's' must be string, found null"),
        ({"n": 1, "s": "x", 3: 0}, "field name 3 is not a string"),
        ([1], "document must be a JSON object, found array"),
    ],
)
def test_require_fields_names_the_field(doc, message):
    with pytest.raises(FormatError, match=message):
        canonical.require_fields(doc, {"n": int, "s": str}, "doc")


def test_require_fields_accepts_bool_only_where_declared():
    canonical.require_fields({"b": True, "o": None}, {"b": bool, "o": (dict, type(None))}, "doc")
    with pytest.raises(FormatError, match="field 'b' must be boolean, found integer"):
        canonical.require_fields({"b": 1, "o": None}, {"b": bool, "o": (dict, type(None))}, "doc")


def test_utc_timestamp_round_trip_drops_microseconds_and_converts_to_utc():
    local = datetime(2025, 1, 2, 5, 4, 5, 999_999, tzinfo=timezone(timedelta(hours=2)))
    text = canonical.utc_timestamp(local)
    assert text == "2025-01-02T03:04:05Z"
    assert canonical.parse_timestamp(text, "t") == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_utc_timestamp_default_is_now():
    before = datetime.now(UTC).replace(microsecond=0)
    assert before <= canonical.parse_timestamp(canonical.utc_timestamp(), "t") <= datetime.now(UTC)


def test_utc_timestamp_refuses_naive_datetime():
    with pytest.raises(InputError, match="timezone-aware"):
        canonical.utc_timestamp(datetime(2025, 1, 1))


@pytest.mark.parametrize(
    "text",
    [
        "2025-01-02T03:04:05",
        "2025-01-02T03:04:05+00:00",
        "2025-01-02T03:04:05.1Z",
        "2025-01-02 03:04:05Z",
        "2025-01-02t03:04:05z",
        "2025-02-30T00:00:00Z",
        "2025-01-02T24:00:00Z",
        "2016-12-31T23:59:60Z",
        "0000-01-01T00:00:00Z",
        "２025-01-02T03:04:05Z",
        20250102,
    ],
)
def test_parse_timestamp_is_strict(text):
    with pytest.raises(FormatError, match="YYYY-MM-DDTHH:MM:SSZ"):
        canonical.parse_timestamp(text, "t")


# ---------------------------------------------------------------- sealed blob


def _blob(**overrides) -> bytes:
    args = {
        "vmid": VMID,
        "vm_uuid": UUID,
        "name": "db.key",
        "keyslot_id": KEYSLOT_ID,
        "generation": 1,
        "plaintext": SECRET,
        "blob_id": BLOB_ID,
        "nonce": NONCE,
        "created": CREATED,
    }
    args.update(overrides)
    return blob.encrypt_blob(VRK, **args)


def _header_doc(**overrides) -> dict:
    doc = {
        "format": "ironclaw-sealed-blob/1",
        "vmid": VMID,
        "vm_uuid": UUID,
        "name": "db.key",
        "blob_id": canonical.b64encode(BLOB_ID),
        "keyslot_id": KEYSLOT_ID,
        "generation": 1,
        "created": CREATED,
        "cipher": "AES-256-GCM",
        "length": len(SECRET),
    }
    doc.update(overrides)
    return doc


def _assemble(header: bytes, plaintext: bytes = SECRET) -> bytes:
    """A blob around arbitrary header bytes, correctly encrypted, so only the header check can refuse it."""
    aad = len(header).to_bytes(4, "big") + header
    info = f"ironclaw-sealed-blob/1|{VMID}|{UUID}|db.key".encode()
    return aad + NONCE + aead.seal(hkdf_sha256(VRK, BLOB_ID, info), NONCE, plaintext, aad)


def _open(data: bytes, vrk: bytes = VRK) -> bytes:
    return blob.decrypt_blob(vrk, blob.parse_blob(data, "blob 'db.key'"), "blob 'db.key'")


def test_blob_round_trip():
    data = _blob()
    parsed = blob.parse_blob(data, "blob 'db.key'")
    assert parsed.header == blob.BlobHeader(
        vmid=VMID,
        vm_uuid=UUID,
        name="db.key",
        blob_id=BLOB_ID,
        keyslot_id=KEYSLOT_ID,
        generation=1,
        created=CREATED,
        length=len(SECRET),
    )
    assert parsed.nonce == NONCE
    assert blob.decrypt_blob(VRK, parsed, "blob 'db.key'") == SECRET


def test_blob_layout_is_prefix_header_nonce_ciphertext_tag():
    data = _blob()
    header = canonical.dumps(_header_doc())
    assert data[:4] == len(header).to_bytes(4, "big")
    assert data[4 : 4 + len(header)] == header
    assert data[4 + len(header) : 16 + len(header)] == NONCE
    assert len(data) == 4 + len(header) + 12 + len(SECRET) + 16
    assert blob.parse_blob(data, "b").aad == data[: 4 + len(header)]
    assert SECRET not in data


def test_blob_matches_the_documented_construction():
    # Pins the key derivation (salt and info string) and the AAD: an independent rebuild must match byte for byte.
    assert _blob() == _assemble(canonical.dumps(_header_doc()))


def test_blob_empty_secret_round_trip():
    assert _open(_blob(plaintext=b"")) == b""


def test_blob_fresh_blob_id_and_nonce_by_default():
    first = blob.parse_blob(_blob(blob_id=None, nonce=None), "b")
    second = blob.parse_blob(_blob(blob_id=None, nonce=None), "b")
    assert first.header.blob_id != second.header.blob_id
    assert first.nonce != second.nonce


def test_blob_created_defaults_to_now():
    header = blob.parse_blob(_blob(created=None), "b").header
    age = datetime.now(UTC) - canonical.parse_timestamp(header.created, "created")
    assert timedelta(0) <= age < timedelta(minutes=1)


def test_blob_largest_fields_fit_in_the_header_limit():
    data = _blob(vmid=999_999_999, name="n" * 128, generation=2**63 - 1)
    header_len = int.from_bytes(data[:4], "big")
    assert header_len < blob.MAX_HEADER_LEN
    assert _open(data) == SECRET


@pytest.mark.parametrize("mask", [0x01, 0x20, 0x80, 0xFF])
def test_blob_every_changed_byte_is_refused(mask):
    data = _blob()
    kinds = set()
    for position in range(len(data)):
        changed = bytearray(data)
        changed[position] ^= mask
        try:
            _open(bytes(changed))
        except (FormatError, VerificationError) as err:
            kinds.add(type(err))
        else:
            pytest.fail(f"a blob with byte {position} xor {mask:#04x} was accepted")
    # Header damage is mostly caught by the parser, body damage by GCM: both paths were exercised.
    assert kinds == {FormatError, VerificationError}


def test_blob_every_truncation_is_refused_before_decryption(monkeypatch):
    data = _blob()

    def must_not_decrypt(*args):
        raise AssertionError("decryption was attempted")

    monkeypatch.setattr(aead, "open_", must_not_decrypt)
    for length in range(len(data)):
        with pytest.raises(FormatError, match="truncated"):
            blob.parse_blob(data[:length], "blob 'db.key'")


def test_blob_truncated_body_names_expected_and_found_size():
    data = _blob()
    with pytest.raises(FormatError, match=f"truncated: expected {len(data)} bytes .* found {len(data) - 1} bytes"):
        blob.parse_blob(data[:-1], "blob 'db.key'")


@pytest.mark.parametrize("extra", [b"\x00", b"ab", b"\n\n\n"])
def test_blob_trailing_bytes_are_refused(extra):
    data = _blob()
    with pytest.raises(
        FormatError, match=f"trailing bytes: expected {len(data)} bytes .* found {len(data) + len(extra)}"
    ):
        blob.parse_blob(data + extra, "blob 'db.key'")


def test_blob_unknown_format_version_is_refused_naming_it():
    data = _assemble(canonical.dumps(_header_doc(format="ironclaw-sealed-blob/2", extra_field=1)))
    with pytest.raises(FormatError, match="found version 'ironclaw-sealed-blob/2'.*upgrade"):
        blob.parse_blob(data, "blob 'db.key'")


@pytest.mark.parametrize(
    "header",
    [
        json.dumps(_header_doc(), sort_keys=True).encode(),
        json.dumps(_header_doc(), separators=(",", ":")).encode(),
        canonical.dumps(_header_doc()) + b" ",
        canonical.dumps(_header_doc()).replace(b'"db.key"', b'"db\\u002ekey"'),
    ],
    ids=["whitespace", "unsorted-keys", "trailing-space", "escaped-char"],
)
def test_blob_non_canonical_header_is_refused(header):
    with pytest.raises(FormatError, match="not canonical"):
        blob.parse_blob(_assemble(header), "blob 'db.key'")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"comment": "hi"}, "unknown field\\(s\\) 'comment'"),
        ({"vmid": "100"}, "field 'vmid' must be integer, found string"),
        ({"vmid": True}, "field 'vmid' must be integer, found boolean"),
        ({"generation": True}, "field 'generation' must be integer, found boolean"),
        ({"length": False}, "field 'length' must be integer, found boolean"),
        ({"vm_uuid": None}, "field 'vm_uuid' must be string, found null"),
        ({"blob_id": BLOB_ID.hex()}, "field 'blob_id': expected base64"),
        ({"blob_id": canonical.b64encode(BLOB_ID[:15])}, "field 'blob_id'.*found 15 bytes"),
        ({"generation": 0}, "field 'generation' must be from 1"),
        ({"length": 16 * 1024 * 1024 + 1}, "field 'length' must be from 0 to 16777216"),
        ({"vmid": 99}, "field 'vmid': VMID must be from 100"),
        ({"vm_uuid": UUID.upper()}, "field 'vm_uuid' must be written as"),
        ({"name": "x.tmp"}, "field 'name': secret name must not end in"),
        ({"keyslot_id": KEYSLOT_ID.upper()}, "field 'keyslot_id': keyslot id must be 32 lowercase hex"),
        ({"cipher": "AES-128-GCM"}, "field 'cipher' must be 'AES-256-GCM'"),
        ({"created": "2025-01-02T03:04:05+00:00"}, "field 'created': expected a UTC timestamp"),
        ({"format": 1}, "unknown format, expected 'ironclaw-sealed-blob/1', found integer instead"),
    ],
)
def test_blob_header_field_faults_are_refused_naming_the_field(overrides, message):
    with pytest.raises(FormatError, match=message):
        blob.parse_blob(_assemble(canonical.dumps(_header_doc(**overrides))), "blob 'db.key'")


@pytest.mark.parametrize("field", sorted(_header_doc()))
def test_blob_header_missing_field_is_refused(field):
    doc = _header_doc()
    del doc[field]
    message = "found no 'format' field" if field == "format" else f"missing required field\\(s\\) '{field}'"
    with pytest.raises(FormatError, match=message):
        blob.parse_blob(_assemble(canonical.dumps(doc)), "blob 'db.key'")


def test_blob_under_another_vrk_is_refused():
    with pytest.raises(VerificationError, match="blob 'db.key' failed authentication"):
        _open(_blob(), OTHER_VRK)


def test_blob_header_rewritten_to_another_vm_fails_authentication():
    # A valid, canonical header for VM 101 in front of VM 100's ciphertext: only GCM can notice.
    data = _blob()
    parsed = blob.parse_blob(data, "b")
    forged = canonical.dumps(_header_doc(vmid=101))
    swapped = len(forged).to_bytes(4, "big") + forged + parsed.nonce + parsed.ciphertext
    with pytest.raises(VerificationError):
        _open(swapped)


def test_blob_renamed_secret_fails_authentication_even_with_a_matching_header():
    data = _blob()
    parsed = blob.parse_blob(data, "b")
    forged = canonical.dumps(_header_doc(name="api.token"))
    swapped = len(forged).to_bytes(4, "big") + forged + parsed.nonce + parsed.ciphertext
    with pytest.raises(VerificationError):
        _open(swapped)


@pytest.mark.parametrize(
    ("claimed", "message"),
    [
        (0, "header length must be from 2 to 4096 bytes, found 0"),
        (1, "found 1;"),
        (4097, "found 4097;"),
        (0xFFFFFFFF, "found 4294967295;"),
        (4000, "header length says 4000 bytes but the file is only"),
    ],
)
def test_blob_absurd_header_length_is_refused(claimed, message):
    data = _blob()
    with pytest.raises(FormatError, match=message):
        blob.parse_blob(claimed.to_bytes(4, "big") + data[4:], "blob 'db.key'")


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x00", b"\x00" * 33, "text", None])
def test_blob_too_short_or_not_bytes_is_refused(data):
    with pytest.raises(FormatError, match="truncated|expected bytes"):
        blob.parse_blob(data, "blob 'db.key'")


IDENTITY = {"vmid": VMID, "vm_uuid": UUID, "name": "db.key", "keyslot_id": KEYSLOT_ID}


def test_blob_identity_matches():
    header = blob.parse_blob(_blob(), "b").header
    blob.check_blob_identity(header, **IDENTITY, what="blob 'db.key'")
    blob.check_blob_identity(header, **{**IDENTITY, "vm_uuid": UUID.upper(), "vmid": "100"}, what="blob 'db.key'")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"vmid": 101},
            f"blob 'db.key' belongs to VM 100 \\(uuid {UUID}\\), not VM 101 \\(uuid {UUID}\\) \\(vmid differs\\): "
            "a blob of another VM was placed in this VM's folder",
        ),
        ({"vm_uuid": OTHER_UUID}, f"not VM 100 \\(uuid {OTHER_UUID}\\) \\(vm_uuid differs\\)"),
        ({"name": "api.token"}, "holds secret 'db.key', not 'api.token' \\(name differs\\)"),
        ({"keyslot_id": "f" * 32}, f"sealed under keyslot {KEYSLOT_ID}.*\\(keyslot_id differs\\)"),
    ],
)
def test_blob_identity_mismatch_names_the_field(change, message):
    header = blob.parse_blob(_blob(), "b").header
    with pytest.raises(VerificationError, match=message):
        blob.check_blob_identity(header, **{**IDENTITY, **change}, what="blob 'db.key'")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vmid": 99}, "VMID"),
        ({"vm_uuid": "nope"}, "uuid"),
        ({"name": "../x"}, "secret name"),
        ({"keyslot_id": "X"}, "keyslot id"),
        ({"generation": 0}, "generation"),
        ({"generation": True}, "generation"),
        ({"plaintext": "text"}, "must be bytes"),
        ({"plaintext": b"\x00" * (16 * 1024 * 1024 + 1)}, "at most 16777216"),
        ({"blob_id": b"short"}, "blob_id must be 16 bytes"),
        ({"nonce": bytes(16)}, "nonce 12 bytes"),
        ({"created": "yesterday"}, "UTC timestamp"),
    ],
)
def test_encrypt_blob_refuses_bad_input(overrides, message):
    with pytest.raises(InputError, match=message):
        _blob(**overrides)


def test_encrypt_blob_refuses_a_vrk_of_the_wrong_size():
    with pytest.raises(InputError, match="32 bytes, found 16"):
        blob.encrypt_blob(bytes(16), **IDENTITY, generation=1, plaintext=b"x")


def test_blob_largest_secret_round_trip():
    big = b"\xa5" * blob.MAX_PLAINTEXT_LEN
    assert _open(_blob(plaintext=big)) == big


# ---------------------------------------------------------------- keyslot


def _tpm2_keyslot(**overrides) -> keyslot.Keyslot:
    fields = {
        "vmid": VMID,
        "vm_uuid": UUID,
        "keyslot_id": KEYSLOT_ID,
        "created": CREATED,
        "migratable": False,
        "node_name": NODE_NAME,
        "policy_key_name": KEY_NAME,
        "policy_key_public": b"\x00\x58" + bytes(range(88)),
        "sealed": keyslot.Tpm2Sealed(public=b"\x00\x4e" + bytes(78), private=b"\x00\x7e" + bytes(range(126))),
    }
    fields.update(overrides)
    return keyslot.Keyslot(**fields)


def _software_keyslot() -> keyslot.Keyslot:
    return _tpm2_keyslot(migratable=True, sealed=keyslot.SoftwareSealed(kek_version=3, wrapped=bytes(range(40))))


def _keyslot_doc(**overrides) -> dict:
    doc = _tpm2_keyslot().to_dict()
    doc.update(overrides)
    return doc


@pytest.mark.parametrize("make", [_tpm2_keyslot, _software_keyslot], ids=["tpm2", "software"])
def test_keyslot_round_trip(make):
    slot = make()
    data = slot.to_bytes()
    assert data == canonical.dumps(json.loads(data))
    assert keyslot.parse_keyslot(data, "keyslot") == slot


def test_keyslot_document_shape():
    doc = json.loads(_tpm2_keyslot().to_bytes())
    assert doc["format"] == "ironclaw-keyslot/1"
    assert doc["backend"] == "tpm2"
    assert doc["node"] == {"name": NODE_NAME.hex()}
    assert doc["policy"]["policy_ref"] == f"ironclaw:vm:{UUID}"
    assert set(doc["sealed"]) == {"public", "private"}
    soft = json.loads(_software_keyslot().to_bytes())
    assert soft["backend"] == "software"
    assert soft["sealed"] == {"kek_version": 3, "wrapped": canonical.b64encode(bytes(range(40)))}


def test_keyslot_policy_ref_helper():
    assert keyslot.policy_ref(UUID.upper()) == f"ironclaw:vm:{UUID}"


@pytest.mark.parametrize("make", [_tpm2_keyslot, _software_keyslot], ids=["tpm2", "software"])
def test_keyslot_every_changed_byte_is_refused_or_still_strictly_valid(make):
    # A change inside an opaque base64/hex value can give another valid document: the TPM (wrong
    # object or name) or KWP integrity catches those. Parsing itself must never fail any other way.
    original = make()
    data = original.to_bytes()
    refused = 0
    for position in range(len(data)):
        changed = bytearray(data)
        changed[position] ^= 0x01
        try:
            parsed = keyslot.parse_keyslot(bytes(changed), "keyslot")
        except FormatError:
            refused += 1
        else:
            assert parsed != original
            assert parsed.to_bytes() == bytes(changed)
    assert refused > len(data) // 2


def test_keyslot_unknown_backend_is_refused():
    with pytest.raises(FormatError, match="unknown backend 'tpm3', expected 'tpm2' or 'software'"):
        keyslot.parse_keyslot(canonical.dumps(_keyslot_doc(backend="tpm3")), "keyslot")


def test_keyslot_software_sealed_part_under_tpm2_backend_is_refused():
    doc = _keyslot_doc(sealed={"kek_version": 1, "wrapped": canonical.b64encode(bytes(40))})
    with pytest.raises(
        FormatError, match="backend 'tpm2'.*missing required field\\(s\\) 'sealed.private', 'sealed.public'"
    ):
        keyslot.parse_keyslot(canonical.dumps(doc), "keyslot")


def test_keyslot_tpm2_sealed_part_under_software_backend_is_refused():
    doc = _keyslot_doc(backend="software")
    with pytest.raises(FormatError, match="backend 'software'.*missing required field\\(s\\) 'sealed.kek_version'"):
        keyslot.parse_keyslot(canonical.dumps(doc), "keyslot")


def test_keyslot_mixed_sealed_part_is_refused():
    doc = _keyslot_doc()
    doc["sealed"]["wrapped"] = canonical.b64encode(bytes(40))
    with pytest.raises(FormatError, match="unknown field\\(s\\) 'sealed.wrapped'"):
        keyslot.parse_keyslot(canonical.dumps(doc), "keyslot")


@pytest.mark.parametrize(
    ("sealed", "message"),
    [
        ({"kek_version": 0, "wrapped": canonical.b64encode(bytes(40))}, "'sealed.kek_version' must be from 1"),
        ({"kek_version": True, "wrapped": canonical.b64encode(bytes(40))}, "must be integer, found boolean"),
        ({"kek_version": 1, "wrapped": canonical.b64encode(bytes(32))}, "'sealed.wrapped'.*found 32 bytes"),
    ],
)
def test_keyslot_software_sealed_part_faults(sealed, message):
    doc = _keyslot_doc(backend="software", sealed=sealed)
    with pytest.raises(FormatError, match=message):
        keyslot.parse_keyslot(canonical.dumps(doc), "keyslot")


@pytest.mark.parametrize("field", ["public", "private"])
def test_keyslot_tpm2_sealed_part_must_not_be_empty(field):
    doc = _keyslot_doc()
    doc["sealed"][field] = ""
    with pytest.raises(FormatError, match=f"'sealed.{field}' must not be empty"):
        keyslot.parse_keyslot(canonical.dumps(doc), "keyslot")


def test_keyslot_policy_ref_of_another_vm_is_refused():
    doc = _keyslot_doc()
    doc["policy"]["policy_ref"] = f"ironclaw:vm:{OTHER_UUID}"
    with pytest.raises(FormatError, match=f"'policy.policy_ref' must be 'ironclaw:vm:{UUID}'"):
        keyslot.parse_keyslot(canonical.dumps(doc), "keyslot")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(migratable=1), "'migratable' must be boolean, found integer"),
        (lambda d: d.update(vmid=True), "'vmid' must be integer, found boolean"),
        (lambda d: d.update(node={"name": NODE_NAME.hex(), "kind": "srk"}), "unknown field\\(s\\) 'node.kind'"),
        (lambda d: d.update(node=NODE_NAME.hex()), "field 'node' must be object, found string"),
        (lambda d: d["node"].update(name=NODE_NAME[:-1].hex()), "'node.name'.*found 33 bytes"),
        (lambda d: d["policy"].update(key_name=NODE_NAME.hex().upper()), "'policy.key_name': expected lowercase hex"),
        (lambda d: d["policy"].pop("key_public"), "missing required field\\(s\\) 'policy.key_public'"),
        (lambda d: d.update(keyslot_id="0" * 31), "'keyslot_id': keyslot id must be 32"),
        (lambda d: d.update(created="2025-13-01T00:00:00Z"), "'created': expected a UTC timestamp"),
        (lambda d: d.update(format="ironclaw-keyslot/2"), "found version 'ironclaw-keyslot/2'"),
    ],
)
def test_keyslot_field_faults_are_refused(change, message):
    doc = _keyslot_doc()
    change(doc)
    with pytest.raises(FormatError, match=message):
        keyslot.parse_keyslot(canonical.dumps(doc), "keyslot")


@pytest.mark.parametrize("extra", [b"\n", b" ", b"{}", b"\x00"])
def test_keyslot_trailing_bytes_are_refused(extra):
    with pytest.raises(FormatError, match="not canonical|not valid JSON"):
        keyslot.parse_keyslot(_tpm2_keyslot().to_bytes() + extra, "keyslot")


def test_keyslot_duplicate_key_is_refused():
    data = _tpm2_keyslot().to_bytes().replace(b'"migratable":false', b'"migratable":false,"migratable":true')
    with pytest.raises(FormatError, match="duplicate key 'migratable'"):
        keyslot.parse_keyslot(data, "keyslot")


def test_keyslot_to_bytes_refuses_what_it_could_not_read_back():
    with pytest.raises(FormatError, match="'sealed.wrapped'.*found 39 bytes"):
        _tpm2_keyslot(sealed=keyslot.SoftwareSealed(kek_version=1, wrapped=bytes(39))).to_bytes()


# ---------------------------------------------------------------- approval


def _approval(**overrides) -> approval.Approval:
    fields = {
        "vmid": VMID,
        "vm_uuid": UUID,
        "node_name": NODE_NAME,
        "epoch": 7,
        "pcrs": approval.PcrBinding(selection="sha256:0,7", digest=hashlib.sha256(b"pcrs").digest()),
        "approved_policy": hashlib.sha256(b"policy").digest(),
        "key_name": KEY_NAME,
        "signature_r": bytes(range(32)),
        "signature_s": bytes(range(32, 64)),
        "issued_at": CREATED,
    }
    fields.update(overrides)
    return approval.Approval(**fields)


def _approval_doc() -> dict:
    return _approval().to_dict()


@pytest.mark.parametrize("pcrs", [None, approval.PcrBinding("sha1:0,1,2,23", bytes(32))], ids=["no-pcrs", "pcrs"])
def test_approval_round_trip(pcrs):
    item = _approval(pcrs=pcrs, epoch=0)
    data = item.to_bytes()
    assert approval.parse_approval(data, "approval") == item
    assert approval.approval_from_dict(json.loads(data), "approval") == item


def test_approval_document_shape():
    doc = json.loads(_approval().to_bytes())
    assert set(doc) == {
        "format",
        "vmid",
        "vm_uuid",
        "node",
        "epoch",
        "pcrs",
        "approved_policy",
        "policy_ref",
        "key_name",
        "signature",
        "issued_at",
    }
    assert doc["format"] == "ironclaw-approval/1"
    assert doc["policy_ref"] == f"ironclaw:vm:{UUID}"
    assert doc["pcrs"]["selection"] == "sha256:0,7"
    assert doc["signature"] == {
        "r": canonical.b64encode(bytes(range(32))),
        "s": canonical.b64encode(bytes(range(32, 64))),
    }


def test_approval_every_changed_byte_is_refused_or_still_strictly_valid():
    # Changes inside the digest, names or signature can give another valid document: the signature
    # check (TPM PolicyAuthorize or the software verifier) refuses those. Parsing never fails otherwise.
    original = _approval()
    data = original.to_bytes()
    refused = 0
    for position in range(len(data)):
        for mask in (0x01, 0x20):
            changed = bytearray(data)
            changed[position] ^= mask
            try:
                parsed = approval.parse_approval(bytes(changed), "approval")
            except FormatError:
                refused += 1
            else:
                assert parsed != original
                assert parsed.to_bytes() == bytes(changed)
    assert refused > len(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(policy_ref=f"ironclaw:vm:{OTHER_UUID}"), "'policy_ref' must be 'ironclaw:vm:"),
        (lambda d: d.update(policy_ref=f"ironclaw:vm:{UUID.upper()}"), "'policy_ref' must be 'ironclaw:vm:"),
        (lambda d: d.update(epoch=-1), "'epoch' must be from 0 to 18446744073709551615"),
        (lambda d: d.update(epoch=2**64), "'epoch' must be from 0"),
        (lambda d: d.update(epoch=True), "'epoch' must be integer, found boolean"),
        (lambda d: d.update(pcrs={}), "missing required field\\(s\\) 'pcrs.digest', 'pcrs.selection'"),
        (lambda d: d.update(pcrs=[]), "'pcrs' must be object or null, found array"),
        (lambda d: d["pcrs"].update(digest="00" * 31), "'pcrs.digest'.*found 31 bytes"),
        (lambda d: d["signature"].update(r=canonical.b64encode(bytes(31))), "'signature.r'.*found 31 bytes"),
        (lambda d: d["signature"].update(v=0), "unknown field\\(s\\) 'signature.v'"),
        (lambda d: d.update(approved_policy="00" * 33), "'approved_policy'.*found 33 bytes"),
        (lambda d: d.update(node="00" * 34), "'node': expected a TPM name starting with 000b"),
        (lambda d: d.update(issued_at="2025-01-02"), "'issued_at': expected a UTC timestamp"),
        (lambda d: d.pop("key_name"), "missing required field\\(s\\) 'key_name'"),
        (lambda d: d.update(format="ironclaw-approval/0"), "found version 'ironclaw-approval/0'"),
    ],
)
def test_approval_field_faults_are_refused(change, message):
    doc = _approval_doc()
    change(doc)
    with pytest.raises(FormatError, match=message):
        approval.parse_approval(canonical.dumps(doc), "approval")
    with pytest.raises(FormatError, match=message):
        approval.approval_from_dict(doc, "approval")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(epoch=7.0), "'epoch' must be integer, found float"),
        (lambda d: d.update({1: 2}), "field name 1 is not a string"),
        (lambda d: d["pcrs"].update(digest=bytes(32)), "'pcrs.digest' must be string, found bytes"),
    ],
)
def test_approval_from_dict_refuses_what_json_cannot_carry(change, message):
    doc = _approval_doc()
    change(doc)
    with pytest.raises(FormatError, match=message):
        approval.approval_from_dict(doc, "approval parameter")


def test_approval_from_dict_refuses_a_non_dict():
    with pytest.raises(FormatError, match="expected a JSON object, found list"):
        approval.approval_from_dict([], "approval parameter")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("sha256:0,7", (("sha256", (0, 7)),)), ("sha1:23", (("sha1", (23,)),)), ("sha1:1+sha256:2", None)],
)
def test_pcr_selection_valid(text, expected):
    selection = approval.parse_pcr_selection(text, "pcrs")
    assert str(selection) == text
    if expected:
        assert selection.banks == expected


@pytest.mark.parametrize(
    "text",
    [
        "sha256:7,0",
        "sha256:0,0",
        "sha256:24",
        "sha256:07",
        "md5:0",
        "sha256:",
        "SHA256:0",
        "sha256: 0",
        "sha256:0,",
        "",
    ],
)
def test_pcr_selection_malformed_is_refused(text):
    doc = _approval_doc()
    doc["pcrs"]["selection"] = text
    with pytest.raises(FormatError, match="'pcrs.selection'"):
        approval.approval_from_dict(doc, "approval")


@pytest.mark.parametrize("extra", [b"\n", b"\r\n", b"0"])
def test_approval_trailing_bytes_are_refused(extra):
    with pytest.raises(FormatError, match="not canonical|not valid JSON"):
        approval.parse_approval(_approval().to_bytes() + extra, "approval")


def test_approval_duplicate_key_is_refused():
    data = _approval().to_bytes().replace(b'"epoch":7', b'"epoch":7,"epoch":8')
    with pytest.raises(FormatError, match="duplicate key 'epoch'"):
        approval.parse_approval(data, "approval")


def test_approval_to_bytes_refuses_what_it_could_not_read_back():
    with pytest.raises(FormatError, match="'pcrs.selection'"):
        _approval(pcrs=approval.PcrBinding("sha256:7,0", bytes(32))).to_bytes()


def test_formats_dataclasses_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _approval().epoch = 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        _tpm2_keyslot().vmid = 101
