# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Software keyslots: the VRK wrapped with AES-KWP (SP 800-38F) under the node KEK.

The wrapping key is HKDF(KEK, keyslot_id, binding) where the binding names the
VM, the policy key and the node, so a keyslot.json whose policy key was
swapped (to sign one's own approvals) no longer unwraps — the role the TPM's
authPolicy plays for tpm2 keyslots.
"""

from __future__ import annotations

import dataclasses
import glob
import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import BackendError, IronclawError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import read_regular, write_atomic
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto import kwp
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.hkdf import hkdf_sha256
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.keyslot import SoftwareSealed, parse_keyslot


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


def rewrap_all(state_dir: str, old_kek: bytes, old: int, new_kek: bytes, new: int, skip_dirs=()) -> list[dict]:
    """Rewrap every software keyslot under state_dir from KEK version `old` to `new` (an epoch bump).

    A keyslot that cannot be carried over (it does not parse, it was wrapped under a KEK that is already gone, or
    it does not unwrap) is left as it is and reported as ``{path, reason}``: the old KEK's erasure that follows
    makes it unusable, and it never blocks the bump (revocation of the others must not depend on it). The
    directories in `skip_dirs` (the VMs being revoked) are left alone.
    """
    skip = {os.path.abspath(path) for path in skip_dirs}
    unusable = []
    for path in sorted(glob.glob(os.path.join(state_dir, "[0-9]*", "keyslot.json"))):
        if os.path.abspath(os.path.dirname(path)) in skip:
            continue
        try:
            keyslot = parse_keyslot(read_regular(path, "keyslot"), path)
            if keyslot.backend != "software" or keyslot.sealed.kek_version == new:
                continue
            if keyslot.sealed.kek_version != old:
                raise BackendError(
                    f"it is wrapped under node KEK version {keyslot.sealed.kek_version}, which is gone (the node is "
                    f"at version {old}): a stale copy, revoked by an earlier epoch bump"
                )
            binding = binding_of(keyslot)
            wrapped = wrap_vrk(new_kek, unwrap_vrk(old_kek, keyslot.sealed.wrapped, binding), binding)
        except IronclawError as exc:
            unusable.append({"path": path, "reason": str(exc)})
            continue
        sealed = SoftwareSealed(kek_version=new, wrapped=wrapped)
        write_atomic(path, dataclasses.replace(keyslot, sealed=sealed).to_bytes())
    return unusable
