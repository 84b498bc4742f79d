"""The transfer bundle format: round trip, and refusal of every single-byte flip, truncation and mix-up."""

from __future__ import annotations

import os

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.blob import encrypt_blob
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.bundle import Bundle, parse_bundle

VRK = os.urandom(32)
UUID = "11111111-2222-4333-8444-555555555555"
KEYSLOT_ID = "ab" * 16


def blob(name: str, vmid: int = 100, uuid: str = UUID) -> bytes:
    return encrypt_blob(
        VRK, vmid=vmid, vm_uuid=uuid, name=name, keyslot_id=KEYSLOT_ID, generation=1, plaintext=name.encode()
    )


def bundle(**changes) -> Bundle:
    fields = {
        "vmid": 100,
        "vm_uuid": UUID,
        "keyslot_id": KEYSLOT_ID,
        "backend": "software",
        "source_name": b"\x00\x0b" + bytes(32),
        "target_name": b"\x00\x0b" + bytes([1]) * 32,
        "created": "2030-01-01T00:00:00Z",
        "policy_key_name": b"\x00\x0b" + bytes([2]) * 32,
        "policy_key_public": b"public",
        "keyslot": {"ephemeral_public": os.urandom(32), "wrapped": os.urandom(40)},
        "blobs": (("a", blob("a")), ("b", blob("b"))),
        "manifest_version": 3,
        "manifest_digest": "cd" * 32,
        "migration_source": "pve1",
        "migration_target": "pve2",
        "not_after": "2030-01-01T01:00:00Z",
    }
    fields.update(changes)
    return Bundle(**fields)


def test_round_trip():
    original = bundle()
    assert parse_bundle(original.to_bytes(), "bundle") == original


def test_every_single_byte_flip_is_refused_or_parses_to_another_canonical_bundle():
    """Structure, names, identities and blob headers are refused; a flip inside opaque key material still
    parses (the TPM or the key unwrap refuses it later), but never as the original bundle."""
    original = bundle(blobs=(("a", blob("a")),))
    data = original.to_bytes()
    refused = 0
    for i in range(len(data)):
        flipped = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
        try:
            parsed = parse_bundle(flipped, "bundle")
        except FormatError:
            refused += 1
            continue
        assert parsed != original and parsed.to_bytes() == flipped
    assert refused > len(data) // 2


@pytest.mark.parametrize("cut", [1, 10, 100])
def test_truncated_and_trailing_bytes_are_refused(cut):
    data = bundle().to_bytes()
    with pytest.raises(FormatError):
        parse_bundle(data[:-cut], "bundle")
    with pytest.raises(FormatError):
        parse_bundle(data + b" " * cut, "bundle")


def test_blob_of_another_vm_is_refused():
    with pytest.raises(FormatError, match="another VM"):
        bundle(blobs=(("a", blob("a", vmid=101)),)).to_bytes()


def test_unsorted_or_repeated_blobs_are_refused():
    with pytest.raises(FormatError, match="sorted"):
        bundle(blobs=(("b", blob("b")), ("a", blob("a")))).to_bytes()
    with pytest.raises(FormatError, match="sorted"):
        bundle(blobs=(("a", blob("a")), ("a", blob("a")))).to_bytes()


def test_keyslot_fields_must_fit_the_backend():
    with pytest.raises(FormatError):
        bundle(backend="tpm2").to_bytes()
    with pytest.raises(FormatError, match="must not be empty"):
        bundle(keyslot={"ephemeral_public": b"", "wrapped": os.urandom(40)}).to_bytes()


def test_migration_to_the_source_itself_is_refused():
    with pytest.raises(FormatError, match="source and target are both 'pve1'"):
        bundle(migration_target="pve1").to_bytes()


def test_migration_node_names_are_checked():
    with pytest.raises(FormatError, match="migration.target"):
        bundle(migration_target="pve 2").to_bytes()
