# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Software keyslots: the VRK wrapped with AES-KWP (SP 800-38F) under the node KEK.

The wrapping key is HKDF(KEK, keyslot_id, binding) where the binding names the
VM, the policy key and the node, so a keyslot.json whose policy key was
swapped (to sign one's own approvals) no longer unwraps — the role the TPM's
authPolicy plays for tpm2 keyslots.
"""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto import kwp
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.hkdf import hkdf_sha256
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical


def _wrapping_key(kek: bytes, binding: dict) -> bytes:
    info = canonical.dumps(
        {
            "format": "ironclaw-software-keyslot-binding/1",
            "vmid": binding["vmid"],
            "vm_uuid": binding["vm_uuid"],
            "keyslot_id": binding["keyslot_id"],
            "policy_key_name": binding["policy_key_name"].hex(),
            "migratable": binding["migratable"],
            "node": binding["node_name"].hex(),
        }
    )
    return hkdf_sha256(kek, bytes.fromhex(binding["keyslot_id"]), info)


def wrap_vrk(kek: bytes, vrk: bytes, binding: dict) -> bytes:
    return kwp.wrap(_wrapping_key(kek, binding), vrk)


def unwrap_vrk(kek: bytes, wrapped: bytes, binding: dict) -> bytes:
    return kwp.unwrap(
        _wrapping_key(kek, binding),
        wrapped,
        "the software keyslot (wrong node KEK, or keyslot.json altered: VM, policy key or node changed)",
    )


def binding_of(keyslot) -> dict:
    return {
        "vmid": keyslot.vmid,
        "vm_uuid": keyslot.vm_uuid,
        "keyslot_id": keyslot.keyslot_id,
        "policy_key_name": keyslot.policy_key_name,
        "migratable": keyslot.migratable,
        "node_name": keyslot.node_name,
    }
