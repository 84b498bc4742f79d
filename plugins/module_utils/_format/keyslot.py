# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The keyslot file ``<state_dir>/<vmid>/keyslot.json``: the VM root key (VRK), sealed.

Canonical JSON with an exact key set. The sealed part depends on the backend:
``tpm2`` keeps the marshaled TPM2B_PUBLIC / TPM2B_PRIVATE of the sealed object,
``software`` keeps the VRK wrapped with AES-KWP under the node KEK of
``kek_version``. This file is not secret; the TPM (or the KEK) protects the VRK.
"""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.digest import policy_ref_for

KEYSLOT_FORMAT = "ironclaw-keyslot/1"
BACKEND_TPM2 = "tpm2"
BACKEND_SOFTWARE = "software"
# AES-KWP of the 32-byte VRK: 32 bytes plus the 8-byte integrity block.
WRAPPED_VRK_LEN = 40
MAX_KEK_VERSION = 2**63 - 1

_FIELDS = {
    "format": str,
    "vmid": int,
    "vm_uuid": str,
    "keyslot_id": str,
    "created": str,
    "backend": str,
    "migratable": bool,
    "node": dict,
    "policy": dict,
    "sealed": dict,
}
_NODE_FIELDS = {"name": str}
_POLICY_FIELDS = {"key_name": str, "key_public": str, "policy_ref": str}
_SEALED_FIELDS = {
    BACKEND_TPM2: {"public": str, "private": str},
    BACKEND_SOFTWARE: {"kek_version": int, "wrapped": str},
}


def policy_ref(vm_uuid: str) -> str:
    """The PolicyAuthorize policyRef that binds approvals to one VM."""
    return policy_ref_for(validate.vm_uuid(vm_uuid)).decode("ascii")


@dataclass(frozen=True)
class Tpm2Sealed:
    """The VRK as a TPM sealed data object (marshaled TPM2B_PUBLIC and TPM2B_PRIVATE)."""

    public: bytes
    private: bytes


@dataclass(frozen=True)
class SoftwareSealed:
    """The VRK wrapped with AES-KWP under the node KEK of ``kek_version``."""

    kek_version: int
    wrapped: bytes


@dataclass(frozen=True)
class Keyslot:
    """A parsed keyslot; ``backend`` follows from the type of ``sealed``."""

    vmid: int
    vm_uuid: str
    keyslot_id: str
    created: str
    migratable: bool
    node_name: bytes
    policy_key_name: bytes
    policy_key_public: bytes
    sealed: Tpm2Sealed | SoftwareSealed

    @property
    def backend(self) -> str:
        return BACKEND_TPM2 if isinstance(self.sealed, Tpm2Sealed) else BACKEND_SOFTWARE

    @property
    def policy_ref(self) -> str:
        return policy_ref(self.vm_uuid)

    def to_dict(self) -> dict:
        if isinstance(self.sealed, Tpm2Sealed):
            sealed = {
                "public": canonical.b64encode(self.sealed.public),
                "private": canonical.b64encode(self.sealed.private),
            }
        else:
            sealed = {"kek_version": self.sealed.kek_version, "wrapped": canonical.b64encode(self.sealed.wrapped)}
        return {
            "format": KEYSLOT_FORMAT,
            "vmid": self.vmid,
            "vm_uuid": self.vm_uuid,
            "keyslot_id": self.keyslot_id,
            "created": self.created,
            "backend": self.backend,
            "migratable": self.migratable,
            "node": {"name": self.node_name.hex()},
            "policy": {
                "key_name": self.policy_key_name.hex(),
                "key_public": canonical.b64encode(self.policy_key_public),
                "policy_ref": self.policy_ref,
            },
            "sealed": sealed,
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON; refuses a keyslot that parse_keyslot would refuse."""
        data = canonical.dumps(self.to_dict())
        if parse_keyslot(data, "new keyslot") != self:
            raise FormatError("new keyslot: does not survive a round trip; a field has the wrong type")
        return data


def _nonempty_b64(value: str, what: str, field: str) -> bytes:
    data = canonical.b64decode(value, f"{what}: field '{field}'")
    if not data:
        raise FormatError(f"{what}: field '{field}' must not be empty; restore an intact copy of the keyslot")
    return data


def parse_keyslot(data: bytes, what: str) -> Keyslot:
    """Parse keyslot.json strictly; every deviation raises FormatError."""
    doc = canonical.loads(data, what)
    canonical.require_format(doc, KEYSLOT_FORMAT, what)
    canonical.require_fields(doc, _FIELDS, what)
    backend = doc["backend"]
    if backend not in _SEALED_FIELDS:
        raise FormatError(
            f"{what}: unknown backend {canonical.show(backend)}, expected 'tpm2' or 'software'; "
            "upgrade ironclaw.sealed if a newer version wrote it"
        )
    canonical.require_fields(doc["node"], _NODE_FIELDS, what, prefix="node.")
    canonical.require_fields(doc["policy"], _POLICY_FIELDS, what, prefix="policy.")
    canonical.require_fields(doc["sealed"], _SEALED_FIELDS[backend], f"{what} (backend '{backend}')", prefix="sealed.")
    vm_uuid = canonical.checked(validate.vm_uuid, doc["vm_uuid"], what, "vm_uuid")
    if doc["policy"]["policy_ref"] != policy_ref(vm_uuid):
        raise FormatError(
            f"{what}: field 'policy.policy_ref' must be '{policy_ref(vm_uuid)}' (from vm_uuid), "
            f"found {canonical.show(doc['policy']['policy_ref'])}; the keyslot was altered or mixed from two VMs"
        )
    sealed_doc = doc["sealed"]
    if backend == BACKEND_TPM2:
        sealed: Tpm2Sealed | SoftwareSealed = Tpm2Sealed(
            public=_nonempty_b64(sealed_doc["public"], what, "sealed.public"),
            private=_nonempty_b64(sealed_doc["private"], what, "sealed.private"),
        )
    else:
        sealed = SoftwareSealed(
            kek_version=canonical.int_field(sealed_doc["kek_version"], what, "sealed.kek_version", 1, MAX_KEK_VERSION),
            wrapped=canonical.b64decode(sealed_doc["wrapped"], f"{what}: field 'sealed.wrapped'", WRAPPED_VRK_LEN),
        )
    return Keyslot(
        vmid=canonical.checked(validate.vmid, doc["vmid"], what, "vmid"),
        vm_uuid=vm_uuid,
        keyslot_id=canonical.checked(validate.keyslot_id, doc["keyslot_id"], what, "keyslot_id"),
        created=canonical.timestamp_field(doc["created"], what, "created"),
        migratable=doc["migratable"],
        node_name=canonical.tpm_name(doc["node"]["name"], f"{what}: field 'node.name'"),
        policy_key_name=canonical.tpm_name(doc["policy"]["key_name"], f"{what}: field 'policy.key_name'"),
        policy_key_public=_nonempty_b64(doc["policy"]["key_public"], what, "policy.key_public"),
        sealed=sealed,
    )
