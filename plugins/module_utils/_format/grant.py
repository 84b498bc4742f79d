# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The duplication grant: the VM's policy key allows its keyslot to move from one node (at its epoch) to one
target node, and nowhere else. Canonical JSON, strictly parsed like the approval.

Version 2: the signed policy also names the source's SRK (PolicySecret), so only the source's own TPM can
use the grant. A version 1 grant does not bind the source TPM and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.approval import MAX_EPOCH, signed_policy_fields
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.keyslot import policy_ref

GRANT_FORMAT = "ironclaw-grant/2"
_REFUSED_FORMATS = {
    "ironclaw-grant/1": "its duplication policy does not bind the source node's TPM",
}
_FIELDS = {
    "format": str,
    "vmid": int,
    "vm_uuid": str,
    "source": str,
    "epoch": int,
    "target": str,
    "target_public": str,
    "approved_policy": str,
    "policy_ref": str,
    "key_name": str,
    "signature": dict,
    "issued_at": str,
}


@dataclass(frozen=True)
class Grant:
    vmid: int
    vm_uuid: str
    source_name: bytes
    epoch: int
    target_name: bytes
    # The target SRK's TPM2B_PUBLIC (tpm2) or X25519 enrollment key (software), from its enrolled record.
    target_public: bytes
    approved_policy: bytes
    key_name: bytes
    signature_r: bytes
    signature_s: bytes
    issued_at: str

    def to_dict(self) -> dict:
        return {
            "format": GRANT_FORMAT,
            "vmid": self.vmid,
            "vm_uuid": self.vm_uuid,
            "source": self.source_name.hex(),
            "epoch": self.epoch,
            "target": self.target_name.hex(),
            "target_public": canonical.b64encode(self.target_public),
            "approved_policy": self.approved_policy.hex(),
            "policy_ref": policy_ref(self.vm_uuid),
            "key_name": self.key_name.hex(),
            "signature": {"r": canonical.b64encode(self.signature_r), "s": canonical.b64encode(self.signature_s)},
            "issued_at": self.issued_at,
        }

    def to_bytes(self) -> bytes:
        data = canonical.dumps(self.to_dict())
        if grant_from_dict(canonical.loads(data, "new grant"), "new grant") != self:
            raise FormatError("new grant: does not survive a round trip; a field has the wrong type")
        return data


def grant_from_dict(doc: object, what: str) -> Grant:
    # A format that is not a string (a list, an object) is not hashable: signed_policy_fields refuses it.
    if isinstance(doc, dict) and isinstance(doc.get("format"), str) and doc["format"] in _REFUSED_FORMATS:
        raise FormatError(
            f"{what}: format '{doc['format']}' is no longer accepted: {_REFUSED_FORMATS[doc['format']]}. "
            f"Have the controller sign a new grant ('{GRANT_FORMAT}'): re-run the migrate playbook"
        )
    common = signed_policy_fields(doc, GRANT_FORMAT, _FIELDS, what)
    target_public = canonical.b64decode(doc["target_public"], f"{what}: field 'target_public'")
    if not target_public:
        raise FormatError(f"{what}: field 'target_public' must not be empty")
    return Grant(
        source_name=canonical.tpm_name(doc["source"], f"{what}: field 'source'"),
        epoch=canonical.int_field(doc["epoch"], what, "epoch", 0, MAX_EPOCH),
        target_name=canonical.tpm_name(doc["target"], f"{what}: field 'target'"),
        target_public=target_public,
        **common,
    )
