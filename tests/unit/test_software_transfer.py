"""Software-backend migration: only the target's enrollment key opens the transferred VRK, bound to the VM."""

from __future__ import annotations

import os

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, VerificationError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import X25519PrivateKey, serialization
from ansible_collections.ironclaw.sealed.plugins.module_utils._software.transfer import (
    unwrap_at_target,
    wrap_for_target,
)

BINDING = {
    "vmid": 100,
    "vm_uuid": "11111111-2222-4333-8444-555555555555",
    "keyslot_id": "ab" * 16,
    "source": "a",
    "target": "b",
}


def enrollment():
    key = X25519PrivateKey.generate()
    raw_private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return raw_private, key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_target_recovers_the_vrk():
    private, public = enrollment()
    vrk = os.urandom(32)
    eph, wrapped = wrap_for_target(vrk, public, BINDING)
    assert vrk not in wrapped and len(wrapped) == 40
    assert unwrap_at_target(private, eph, wrapped, BINDING) == vrk


def test_another_node_cannot_open_it():
    _private, public = enrollment()
    other_private, _other_public = enrollment()
    eph, wrapped = wrap_for_target(os.urandom(32), public, BINDING)
    with pytest.raises(VerificationError):
        unwrap_at_target(other_private, eph, wrapped, BINDING)


@pytest.mark.parametrize("field", sorted(BINDING))
def test_altered_binding_is_refused(field):
    private, public = enrollment()
    eph, wrapped = wrap_for_target(os.urandom(32), public, BINDING)
    altered = {**BINDING, field: "x" if isinstance(BINDING[field], str) else 101}
    with pytest.raises(VerificationError):
        unwrap_at_target(private, eph, wrapped, altered)


def test_flipped_byte_is_refused():
    private, public = enrollment()
    eph, wrapped = wrap_for_target(os.urandom(32), public, BINDING)
    with pytest.raises(VerificationError):
        unwrap_at_target(private, eph, bytes([wrapped[0] ^ 1]) + wrapped[1:], BINDING)


def test_malformed_keys_are_refused():
    with pytest.raises(InputError, match="32 bytes"):
        wrap_for_target(os.urandom(32), b"short", BINDING)
