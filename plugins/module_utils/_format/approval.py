# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The unseal approval ``<state_dir>/<vmid>/approval.json``.

The controller signs, with the VM's policy key, an approved sub-policy for one
node at one epoch (optionally with PCR values). It lives beside the keyslot
because it changes on epoch bumps and PCR refreshes. This module checks the
document's shape only; the TPM (or the software backend) checks the signature
and that the policy matches.
"""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.keyslot import policy_ref
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection

APPROVAL_FORMAT = "ironclaw-approval/1"
MAX_EPOCH = 2**64 - 1  # TPM NV counters are 64-bit
DIGEST_LEN = 32
SCALAR_LEN = 32  # ECDSA P-256 r and s, big-endian, fixed width

_FIELDS = {
    "format": str,
    "vmid": int,
    "vm_uuid": str,
    "node": str,
    "epoch": int,
    "pcrs": (dict, type(None)),
    "approved_policy": str,
    "policy_ref": str,
    "key_name": str,
    "signature": dict,
    "issued_at": str,
}
_PCR_FIELDS = {"selection": str, "digest": str}
_SIGNATURE_FIELDS = {"r": str, "s": str}


def parse_pcr_selection(text: str, what: str) -> PcrSelection:
    """A PCR selection in its canonical text form (the one PcrSelection prints), else FormatError."""
    try:
        selection = PcrSelection.parse(text)
    except InputError as exc:
        raise FormatError(f"{what}: {exc}") from exc
    if str(selection) != text:
        raise FormatError(f"{what}: PCR selection {canonical.show(text)} is not canonical, expected '{selection}'")
    return selection


@dataclass(frozen=True)
class PcrBinding:
    """PCR values the approval is bound to: the selection and the PolicyPCR digest of their values."""

    selection: str
    digest: bytes


@dataclass(frozen=True)
class Approval:
    """A parsed unseal approval (binary fields as bytes)."""

    vmid: int
    vm_uuid: str
    node_name: bytes
    epoch: int
    pcrs: PcrBinding | None
    approved_policy: bytes
    key_name: bytes
    signature_r: bytes
    signature_s: bytes
    issued_at: str

    @property
    def policy_ref(self) -> str:
        return policy_ref(self.vm_uuid)

    def to_dict(self) -> dict:
        pcrs = None if self.pcrs is None else {"selection": self.pcrs.selection, "digest": self.pcrs.digest.hex()}
        return {
            "format": APPROVAL_FORMAT,
            "vmid": self.vmid,
            "vm_uuid": self.vm_uuid,
            "node": self.node_name.hex(),
            "epoch": self.epoch,
            "pcrs": pcrs,
            "approved_policy": self.approved_policy.hex(),
            "policy_ref": self.policy_ref,
            "key_name": self.key_name.hex(),
            "signature": {"r": canonical.b64encode(self.signature_r), "s": canonical.b64encode(self.signature_s)},
            "issued_at": self.issued_at,
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON; refuses an approval that parse_approval would refuse."""
        data = canonical.dumps(self.to_dict())
        if parse_approval(data, "new approval") != self:
            raise FormatError("new approval: does not survive a round trip; a field has the wrong type")
        return data


def signed_policy_fields(doc: object, fmt: str, fields: dict, what: str) -> dict:
    """Check a signed-policy document (approval or grant): its exact fields, then the parts they all share.

    Returns vmid, vm_uuid, approved_policy, key_name, signature_r, signature_s and issued_at, parsed.
    """
    if not isinstance(doc, dict):
        raise FormatError(f"{what}: expected a JSON object, found {type(doc).__name__}")
    canonical.require_format(doc, fmt, what)
    canonical.require_fields(doc, fields, what)
    canonical.require_fields(doc["signature"], _SIGNATURE_FIELDS, what, prefix="signature.")
    vm_uuid = canonical.checked(validate.vm_uuid, doc["vm_uuid"], what, "vm_uuid")
    if doc["policy_ref"] != policy_ref(vm_uuid):
        raise FormatError(
            f"{what}: field 'policy_ref' must be '{policy_ref(vm_uuid)}' (from vm_uuid), "
            f"found {canonical.show(doc['policy_ref'])}; it was made for another VM or altered"
        )
    signature = doc["signature"]
    return {
        "vmid": canonical.checked(validate.vmid, doc["vmid"], what, "vmid"),
        "vm_uuid": vm_uuid,
        "approved_policy": canonical.hex_bytes(doc["approved_policy"], f"{what}: field 'approved_policy'", DIGEST_LEN),
        "key_name": canonical.tpm_name(doc["key_name"], f"{what}: field 'key_name'"),
        "signature_r": canonical.b64decode(signature["r"], f"{what}: field 'signature.r'", SCALAR_LEN),
        "signature_s": canonical.b64decode(signature["s"], f"{what}: field 'signature.s'", SCALAR_LEN),
        "issued_at": canonical.timestamp_field(doc["issued_at"], what, "issued_at"),
    }


def approval_from_dict(doc: object, what: str) -> Approval:
    """Check an already-decoded approval (a module parameter) exactly as strictly as the file."""
    common = signed_policy_fields(doc, APPROVAL_FORMAT, _FIELDS, what)
    pcrs = None
    if doc["pcrs"] is not None:
        canonical.require_fields(doc["pcrs"], _PCR_FIELDS, what, prefix="pcrs.")
        parse_pcr_selection(doc["pcrs"]["selection"], f"{what}: field 'pcrs.selection'")
        pcrs = PcrBinding(
            selection=doc["pcrs"]["selection"],
            digest=canonical.hex_bytes(doc["pcrs"]["digest"], f"{what}: field 'pcrs.digest'", DIGEST_LEN),
        )
    return Approval(
        node_name=canonical.tpm_name(doc["node"], f"{what}: field 'node'"),
        epoch=canonical.int_field(doc["epoch"], what, "epoch", 0, MAX_EPOCH),
        pcrs=pcrs,
        **common,
    )


def parse_approval(data: bytes, what: str) -> Approval:
    """Parse approval.json strictly; every deviation raises FormatError."""
    return approval_from_dict(canonical.loads(data, what), what)
