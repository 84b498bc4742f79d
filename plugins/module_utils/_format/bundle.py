# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The transfer bundle a migration carries from source to target: the keyslot re-bound to the target
(a TPM duplicate, or the VRK wrapped to the target's enrollment key), the unchanged sealed blobs, the
manifest version it was exported from and the migration it belongs to ({source, target, not_after}, as the
next manifest will record it). No secret is in it in the clear."""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.blob import parse_blob

BUNDLE_FORMAT = "ironclaw-transfer/1"
_FIELDS = {
    "format": str,
    "vmid": int,
    "vm_uuid": str,
    "keyslot_id": str,
    "backend": str,
    "source": str,
    "target": str,
    "created": str,
    "policy": dict,
    "keyslot": dict,
    "blobs": list,
    "manifest": dict,
    "migration": dict,
}
_POLICY_FIELDS = {"key_name": str, "key_public": str}
_KEYSLOT_FIELDS = {
    "tpm2": {"public": str, "duplicate": str, "seed": str},
    "software": {"ephemeral_public": str, "wrapped": str},
}
_BLOB_FIELDS = {"name": str, "data": str}
_MANIFEST_FIELDS = {"version": int, "digest": str}
_MIGRATION_FIELDS = {"source": str, "target": str, "not_after": str}


@dataclass(frozen=True)
class Bundle:
    vmid: int
    vm_uuid: str
    keyslot_id: str
    backend: str
    source_name: bytes
    target_name: bytes
    created: str
    policy_key_name: bytes
    policy_key_public: bytes
    keyslot: dict  # the backend's fields, as bytes
    blobs: tuple  # ((name, file bytes), ...) sorted by name
    manifest_version: int
    manifest_digest: str
    # Inventory (Proxmox node) names and the time after which the target must refuse the bundle.
    migration_source: str
    migration_target: str
    not_after: str

    def to_dict(self) -> dict:
        return {
            "format": BUNDLE_FORMAT,
            "vmid": self.vmid,
            "vm_uuid": self.vm_uuid,
            "keyslot_id": self.keyslot_id,
            "backend": self.backend,
            "source": self.source_name.hex(),
            "target": self.target_name.hex(),
            "created": self.created,
            "policy": {
                "key_name": self.policy_key_name.hex(),
                "key_public": canonical.b64encode(self.policy_key_public),
            },
            "keyslot": {k: canonical.b64encode(v) for k, v in sorted(self.keyslot.items())},
            "blobs": [{"name": n, "data": canonical.b64encode(d)} for n, d in self.blobs],
            "manifest": {"version": self.manifest_version, "digest": self.manifest_digest},
            "migration": {
                "source": self.migration_source,
                "target": self.migration_target,
                "not_after": self.not_after,
            },
        }

    def to_bytes(self) -> bytes:
        data = canonical.dumps(self.to_dict())
        if parse_bundle(data, "new transfer bundle") != self:
            raise FormatError("new transfer bundle: does not survive a round trip; a field has the wrong type")
        return data


def parse_bundle(data: bytes, what: str) -> Bundle:
    doc = canonical.loads(data, what)
    canonical.require_format(doc, BUNDLE_FORMAT, what)
    canonical.require_fields(doc, _FIELDS, what)
    backend = doc["backend"]
    if backend not in _KEYSLOT_FIELDS:
        raise FormatError(f"{what}: unknown backend {canonical.show(backend)}, expected 'tpm2' or 'software'")
    canonical.require_fields(doc["policy"], _POLICY_FIELDS, what, prefix="policy.")
    canonical.require_fields(doc["keyslot"], _KEYSLOT_FIELDS[backend], what, prefix="keyslot.")
    canonical.require_fields(doc["manifest"], _MANIFEST_FIELDS, what, prefix="manifest.")
    canonical.require_fields(doc["migration"], _MIGRATION_FIELDS, what, prefix="migration.")
    migration = doc["migration"]
    for field in ("source", "target"):
        canonical.checked(validate.node_name, migration[field], what, f"migration.{field}")
    if migration["source"] == migration["target"]:
        raise FormatError(f"{what}: field 'migration': source and target are both '{migration['source']}'")
    keyslot = {}
    for field in _KEYSLOT_FIELDS[backend]:
        keyslot[field] = canonical.b64decode(doc["keyslot"][field], f"{what}: field 'keyslot.{field}'")
        if not keyslot[field]:
            raise FormatError(f"{what}: field 'keyslot.{field}' must not be empty")
    vmid = canonical.checked(validate.vmid, doc["vmid"], what, "vmid")
    vm_uuid = canonical.checked(validate.vm_uuid, doc["vm_uuid"], what, "vm_uuid")
    blobs, names = [], []
    for index, item in enumerate(doc["blobs"]):
        canonical.require_fields(item, _BLOB_FIELDS, what, prefix=f"blobs[{index}].")
        name = canonical.checked(validate.secret_name, item["name"], what, f"blobs[{index}].name")
        data_bytes = canonical.b64decode(item["data"], f"{what}: field 'blobs[{index}].data'")
        header = parse_blob(data_bytes, f"{what}: blob '{name}'").header
        if (header.vmid, header.vm_uuid, header.name, header.keyslot_id) != (vmid, vm_uuid, name, doc["keyslot_id"]):
            raise FormatError(f"{what}: blob '{name}' was sealed for another VM, name or keyslot")
        names.append(name)
        blobs.append((name, data_bytes))
    if names != sorted(set(names)):
        raise FormatError(f"{what}: blobs must be sorted by name without repeats")
    canonical.hex_bytes(doc["manifest"]["digest"], f"{what}: field 'manifest.digest'", 32)
    return Bundle(
        vmid=vmid,
        vm_uuid=vm_uuid,
        keyslot_id=canonical.checked(validate.keyslot_id, doc["keyslot_id"], what, "keyslot_id"),
        backend=backend,
        source_name=canonical.tpm_name(doc["source"], f"{what}: field 'source'"),
        target_name=canonical.tpm_name(doc["target"], f"{what}: field 'target'"),
        created=canonical.timestamp_field(doc["created"], what, "created"),
        policy_key_name=canonical.tpm_name(doc["policy"]["key_name"], f"{what}: field 'policy.key_name'"),
        policy_key_public=canonical.b64decode(doc["policy"]["key_public"], f"{what}: field 'policy.key_public'"),
        keyslot=keyslot,
        blobs=tuple(blobs),
        manifest_version=canonical.int_field(doc["manifest"]["version"], what, "manifest.version", 1, 2**63 - 1),
        manifest_digest=doc["manifest"]["digest"],
        migration_source=migration["source"],
        migration_target=migration["target"],
        not_after=canonical.timestamp_field(migration["not_after"], what, "migration.not_after"),
    )
