# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Software-backend migration: the VRK wrapped to the target node's X25519 enrollment key.

An ephemeral X25519 key agreement gives a one-time key (HKDF-SHA256 over the
shared secret, salted with both public keys, bound to the VM, keyslot and both
nodes), under which the VRK is wrapped with AES-KWP. Only the target's
enrollment private key can open it; any change to the binding makes it fail.
"""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto import kwp
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.hkdf import hkdf_sha256
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import (
    X25519PrivateKey,
    X25519PublicKey,
    serialization,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical

_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw) if serialization else None


def _transfer_key(shared: bytes, ephemeral_public: bytes, target_public: bytes, binding: dict) -> bytes:
    info = canonical.dumps({"format": "ironclaw-software-transfer/1", **binding})
    return hkdf_sha256(shared, ephemeral_public + target_public, info)


def _public(raw: bytes, what: str):
    if len(raw) != 32:
        raise InputError(f"{what}: an X25519 public key has 32 bytes, found {len(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def wrap_for_target(vrk: bytes, target_public: bytes, binding: dict) -> tuple[bytes, bytes]:
    """(ephemeral public key, wrapped VRK); `binding` names vmid, vm_uuid, keyslot_id, source and target."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(*_RAW)
    shared = ephemeral.exchange(_public(target_public, "target enrollment key"))
    return ephemeral_public, kwp.wrap(_transfer_key(shared, ephemeral_public, target_public, binding), vrk)


def unwrap_at_target(enrollment_private: bytes, ephemeral_public: bytes, wrapped: bytes, binding: dict) -> bytes:
    key = X25519PrivateKey.from_private_bytes(enrollment_private)
    target_public = key.public_key().public_bytes(*_RAW)
    shared = key.exchange(_public(ephemeral_public, "transfer ephemeral key"))
    return kwp.unwrap(
        _transfer_key(shared, ephemeral_public, target_public, binding),
        wrapped,
        "the transferred keyslot (made for another node's enrollment key, or its binding was altered)",
    )
