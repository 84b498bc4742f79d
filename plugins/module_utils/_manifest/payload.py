# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The manifest payload ``ironclaw-manifest/2``: one VM's whole sealed state at one version.

The *statement* is the part that describes sealed state (subject, node,
keyslot, blobs, state, migration) and the VM's recorded policy (migratable,
PCR selection); the rest (manifest_id, version, issued_at, expires, prev)
places a statement in the VM's signed chain. Two manifests with equal
statements describe the same sealed state under the same policy.

A node describes its files (a statement without ``policy``); the controller
adds the policy it records (DESIGN §7 A2) before it signs.

A tombstone (state ``destroyed``) ends a VM's chain: its keyslot is null, its
blob list empty and it has no migration.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.validate import node_name as check_node_name
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.blob import MAX_GENERATION
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection

MANIFEST_FORMAT = "ironclaw-manifest/2"
# Version 1 did not record the VM's policy; it is refused with its own message.
OLD_MANIFEST_FORMATS = ("ironclaw-manifest/1",)
MANIFEST_PAYLOAD_TYPE = "application/vnd.ironclaw.manifest.v1+json"
KEYSLOT_FILE = "keyslot.json"
STATE_ACTIVE = "active"
STATE_DESTROYED = "destroyed"
STATES = (STATE_ACTIVE, STATE_DESTROYED)
MANIFEST_ID_LEN = 16
SHA256_LEN = 32
MAX_VERSION = 2**63 - 1
MAX_INT = 2**63 - 1
MAX_BLOBS = 4096

_CLUSTER = re.compile(r"[A-Za-z0-9._-]{1,64}")
_META_FIELDS = {
    "format": str,
    "manifest_id": str,
    "version": int,
    "issued_at": str,
    "expires": str,
    "prev": (str, type(None)),
}
_STATEMENT_FIELDS = {
    "subject": dict,
    "node": dict,
    "keyslot": (dict, type(None)),
    "blobs": list,
    "state": str,
    "policy": dict,
}
_OPTIONAL_FIELDS = {"migration": dict}
_SUBJECT_FIELDS = {"vmid": int, "vm_uuid": str, "vm_ctime": (int, type(None)), "cluster": str}
_NODE_FIELDS = {"name": str, "id": str}
_KEYSLOT_FIELDS = {"name": str, "sha256": str, "keyslot_id": str}
_BLOB_FIELDS = {"name": str, "sha256": str, "size": int, "generation": int}
_MIGRATION_FIELDS = {"source": str, "target": str, "not_after": str}
_POLICY_FIELDS = {"migratable": bool, "pcrs": (str, type(None))}


def check_cluster_name(value: object) -> str:
    if not isinstance(value, str) or not _CLUSTER.fullmatch(value):
        raise InputError(f"cluster name must be 1 to 64 characters of A-Z a-z 0-9 . _ -, found {canonical.show(value)}")
    return value


@dataclass(frozen=True)
class Subject:
    vmid: int
    vm_uuid: str
    vm_ctime: int | None
    cluster: str


@dataclass(frozen=True)
class NodeRef:
    name: str
    id: str  # hex of the node's SRK name (software backend: its enrollment name)


@dataclass(frozen=True)
class KeyslotRef:
    sha256: str
    keyslot_id: str
    name: str = KEYSLOT_FILE


@dataclass(frozen=True)
class BlobRef:
    name: str
    sha256: str
    size: int
    generation: int


@dataclass(frozen=True)
class Migration:
    source: str
    target: str
    not_after: str


@dataclass(frozen=True)
class RecordedPolicy:
    """The VM's policy as its manifest records it: every approval and grant follows it."""

    migratable: bool
    pcrs: str | None  # canonical PcrSelection text, e.g. "sha256:0,7"; None binds no PCRs

    def to_dict(self) -> dict:
        return {"migratable": self.migratable, "pcrs": self.pcrs}


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest payload; hex and timestamp fields as written."""

    manifest_id: str
    version: int
    issued_at: str
    expires: str
    subject: Subject
    node: NodeRef
    keyslot: KeyslotRef | None
    blobs: tuple[BlobRef, ...]
    state: str
    prev: str | None
    policy: RecordedPolicy
    migration: Migration | None = None

    @property
    def destroyed(self) -> bool:
        return self.state == STATE_DESTROYED

    def to_dict(self) -> dict:
        doc = {
            "format": MANIFEST_FORMAT,
            "manifest_id": self.manifest_id,
            "version": self.version,
            "issued_at": self.issued_at,
            "expires": self.expires,
            "prev": self.prev,
        }
        doc.update(statement_of(self))
        return doc

    def to_bytes(self) -> bytes:
        """Canonical JSON; refuses a manifest that parse_manifest would refuse."""
        data = canonical.dumps(self.to_dict())
        if parse_manifest(data, "new manifest") != self:
            raise FormatError("new manifest: does not survive a round trip; a field has the wrong type")
        return data


def statement_of(manifest: Manifest) -> dict:
    """The sealed-state part of a manifest, as the payload writes it (``migration`` only when set)."""
    doc = {
        "subject": {
            "vmid": manifest.subject.vmid,
            "vm_uuid": manifest.subject.vm_uuid,
            "vm_ctime": manifest.subject.vm_ctime,
            "cluster": manifest.subject.cluster,
        },
        "node": {"name": manifest.node.name, "id": manifest.node.id},
        "keyslot": None
        if manifest.keyslot is None
        else {
            "name": manifest.keyslot.name,
            "sha256": manifest.keyslot.sha256,
            "keyslot_id": manifest.keyslot.keyslot_id,
        },
        "blobs": [
            {"name": b.name, "sha256": b.sha256, "size": b.size, "generation": b.generation} for b in manifest.blobs
        ],
        "state": manifest.state,
        "policy": manifest.policy.to_dict(),
    }
    if manifest.migration is not None:
        doc["migration"] = {
            "source": manifest.migration.source,
            "target": manifest.migration.target,
            "not_after": manifest.migration.not_after,
        }
    return doc


def _sha256(value: str, what: str, field: str) -> str:
    canonical.hex_bytes(value, f"{what}: field '{field}'", SHA256_LEN)
    return value


def _subject(doc: object, what: str) -> Subject:
    canonical.require_fields(doc, _SUBJECT_FIELDS, what, prefix="subject.")
    ctime = doc["vm_ctime"]
    return Subject(
        vmid=canonical.checked(validate.vmid, doc["vmid"], what, "subject.vmid"),
        vm_uuid=canonical.checked(validate.vm_uuid, doc["vm_uuid"], what, "subject.vm_uuid"),
        vm_ctime=None if ctime is None else canonical.int_field(ctime, what, "subject.vm_ctime", 0, MAX_INT),
        cluster=canonical.checked(check_cluster_name, doc["cluster"], what, "subject.cluster"),
    )


def _node(doc: object, what: str) -> NodeRef:
    canonical.require_fields(doc, _NODE_FIELDS, what, prefix="node.")
    canonical.tpm_name(doc["id"], f"{what}: field 'node.id'")
    return NodeRef(name=canonical.checked(check_node_name, doc["name"], what, "node.name"), id=doc["id"])


def _keyslot(doc: object, what: str) -> KeyslotRef | None:
    if doc is None:
        return None
    canonical.require_fields(doc, _KEYSLOT_FIELDS, what, prefix="keyslot.")
    if doc["name"] != KEYSLOT_FILE:
        raise FormatError(f"{what}: field 'keyslot.name' must be '{KEYSLOT_FILE}', found {canonical.show(doc['name'])}")
    return KeyslotRef(
        sha256=_sha256(doc["sha256"], what, "keyslot.sha256"),
        keyslot_id=canonical.checked(validate.keyslot_id, doc["keyslot_id"], what, "keyslot.keyslot_id"),
    )


def _blobs(items: list, what: str) -> tuple[BlobRef, ...]:
    if len(items) > MAX_BLOBS:
        raise FormatError(f"{what}: field 'blobs' holds {len(items)} entries, at most {MAX_BLOBS} are allowed")
    blobs = []
    for index, item in enumerate(items):
        field = f"blobs[{index}]"
        canonical.require_fields(item, _BLOB_FIELDS, what, prefix=f"{field}.")
        name = canonical.checked(validate.secret_name, item["name"], what, f"{field}.name")
        if blobs and name <= blobs[-1].name:
            problem = "listed twice" if name == blobs[-1].name else "not sorted by name"
            raise FormatError(f"{what}: field 'blobs': blob '{name}' is {problem}")
        blobs.append(
            BlobRef(
                name=name,
                sha256=_sha256(item["sha256"], what, f"{field}.sha256"),
                size=canonical.int_field(item["size"], what, f"{field}.size", 0, MAX_INT),
                generation=canonical.int_field(item["generation"], what, f"{field}.generation", 1, MAX_GENERATION),
            )
        )
    return tuple(blobs)


def _migration(doc: object, what: str) -> Migration:
    canonical.require_fields(doc, _MIGRATION_FIELDS, what, prefix="migration.")
    migration = Migration(
        source=canonical.checked(check_node_name, doc["source"], what, "migration.source"),
        target=canonical.checked(check_node_name, doc["target"], what, "migration.target"),
        not_after=canonical.timestamp_field(doc["not_after"], what, "migration.not_after"),
    )
    if migration.source == migration.target:
        raise FormatError(f"{what}: field 'migration': source and target are both '{migration.source}'")
    return migration


def _policy(doc: object, what: str) -> RecordedPolicy:
    canonical.require_fields(doc, _POLICY_FIELDS, what, prefix="policy.")
    pcrs = doc["pcrs"]
    if pcrs is not None:
        try:
            selection = str(PcrSelection.parse(pcrs))
        except InputError as err:
            raise FormatError(f"{what}: field 'policy.pcrs': {err}") from None
        if selection != pcrs:
            raise FormatError(
                f"{what}: field 'policy.pcrs' must be written canonically ('{selection}'), found '{pcrs}'"
            )
    return RecordedPolicy(migratable=doc["migratable"], pcrs=pcrs)


def recorded_policy(spec) -> RecordedPolicy:
    """The policy to record from a parsed PolicySpec (its `migratable` and `pcrs`)."""
    return RecordedPolicy(migratable=spec.migratable, pcrs=None if spec.pcrs is None else str(spec.pcrs))


def parse_manifest(data: bytes, what: str) -> Manifest:
    """Parse a manifest payload strictly (format first, exact fields, types, ranges, order)."""
    doc = canonical.loads(data, what)
    if isinstance(doc, dict) and doc.get("format") in OLD_MANIFEST_FORMATS:
        raise FormatError(
            f"{what}: format {doc['format']} does not record the VM's policy and is no longer accepted "
            f"(this collection reads {MANIFEST_FORMAT}); re-provision the VM to issue a new chain"
        )
    canonical.require_format(doc, MANIFEST_FORMAT, what)
    fields = {**_META_FIELDS, **_STATEMENT_FIELDS}
    if "migration" in doc:
        fields.update(_OPTIONAL_FIELDS)
    canonical.require_fields(doc, fields, what)
    version = canonical.int_field(doc["version"], what, "version", 1, MAX_VERSION)
    issued_at = canonical.parse_timestamp(doc["issued_at"], f"{what}: field 'issued_at'")
    if canonical.parse_timestamp(doc["expires"], f"{what}: field 'expires'") <= issued_at:
        raise FormatError(f"{what}: field 'expires' ({doc['expires']}) must be later than 'issued_at'")
    prev = doc["prev"]
    if (version == 1) != (prev is None):
        raise FormatError(
            f"{what}: field 'prev' must be null exactly for version 1 (found version {version} with prev "
            f"{'null' if prev is None else 'set'})"
        )
    state = doc["state"]
    if state not in STATES:
        raise FormatError(f"{what}: field 'state' must be 'active' or 'destroyed', found {canonical.show(state)}")
    manifest = Manifest(
        manifest_id=canonical.hex_bytes(doc["manifest_id"], f"{what}: field 'manifest_id'", MANIFEST_ID_LEN).hex(),
        version=version,
        issued_at=doc["issued_at"],
        expires=doc["expires"],
        subject=_subject(doc["subject"], what),
        node=_node(doc["node"], what),
        keyslot=_keyslot(doc["keyslot"], what),
        blobs=_blobs(doc["blobs"], what),
        state=state,
        prev=None if prev is None else _sha256(prev, what, "prev"),
        policy=_policy(doc["policy"], what),
        migration=_migration(doc["migration"], what) if "migration" in doc else None,
    )
    if manifest.destroyed and (manifest.keyslot is not None or manifest.blobs or manifest.migration is not None):
        raise FormatError(f"{what}: a destroyed tombstone must have keyslot null, no blobs and no migration")
    if not manifest.destroyed and manifest.keyslot is None:
        raise FormatError(f"{what}: an active manifest needs its keyslot (only a destroyed tombstone has none)")
    return manifest


def _require_statement_keys(statement: object) -> None:
    if not isinstance(statement, dict):
        raise InputError(f"a manifest statement must be a dict, found {type(statement).__name__}")
    unknown = sorted(set(statement) - set(_STATEMENT_FIELDS) - set(_OPTIONAL_FIELDS))
    if unknown:
        raise InputError(f"a manifest statement has unknown field(s) {', '.join(unknown)}")


# What a node's statement carries in place of the policy while it is checked alone.
_NO_POLICY = {"migratable": False, "pcrs": None}


def check_statement(statement: dict, what: str = "manifest statement", *, with_policy: bool = True) -> dict:
    """Validate a statement alone (FormatError as parse_manifest would raise); returns it normalized.

    ``with_policy=False`` checks a node's description, which has no ``policy`` (the controller adds it).
    """
    _require_statement_keys(statement)
    if not with_policy:
        if "policy" in statement:
            raise InputError(f"{what}: a node's description must not carry a policy: the controller records it")
        statement = {**statement, "policy": _NO_POLICY}
    doc = {
        **statement,
        "format": MANIFEST_FORMAT,
        "manifest_id": "00" * MANIFEST_ID_LEN,
        "version": 1,
        "issued_at": "2000-01-01T00:00:00Z",
        "expires": "2000-01-02T00:00:00Z",
        "prev": None,
    }
    checked = statement_of(parse_manifest(canonical.dumps(doc), what))
    if not with_policy:
        del checked["policy"]
    return checked


def with_policy(statement: dict, policy: RecordedPolicy) -> dict:
    """A node's statement with the policy the controller records for the VM."""
    return check_statement({**statement, "policy": policy.to_dict()})


def make_statement(
    described: dict,
    *,
    vmid: int,
    vm_uuid: str,
    vm_ctime: int | None,
    cluster: str,
    node_name: str,
    node_id: bytes | str,
    migration: dict | None = None,
) -> dict:
    """An active statement from describe_vm() output and the VM's identity."""
    doc = {
        "subject": {
            "vmid": validate.vmid(vmid),
            "vm_uuid": validate.vm_uuid(vm_uuid),
            "vm_ctime": vm_ctime,
            "cluster": cluster,
        },
        "node": {"name": node_name, "id": node_id.hex() if isinstance(node_id, bytes) else node_id},
        "keyslot": described["keyslot"],
        "blobs": described["blobs"],
        "state": STATE_ACTIVE,
    }
    if migration is not None:
        doc["migration"] = migration
    try:
        return check_statement(doc, "manifest statement", with_policy=False)
    except FormatError as err:
        raise InputError(str(err)) from None


def new_manifest(
    statement: dict,
    *,
    version: int,
    prev: str | None,
    issued_at: datetime,
    expires: datetime,
    manifest_id: str | None = None,
) -> Manifest:
    """Place a statement in the chain: the next version after the envelope whose digest is ``prev``."""
    _require_statement_keys(statement)
    doc = {
        **statement,
        "format": MANIFEST_FORMAT,
        "manifest_id": os.urandom(MANIFEST_ID_LEN).hex() if manifest_id is None else manifest_id,
        "version": version,
        "issued_at": canonical.utc_timestamp(issued_at),
        "expires": canonical.utc_timestamp(expires),
        "prev": prev,
    }
    return parse_manifest(canonical.dumps(doc), "new manifest")


def tombstone_statement(manifest: Manifest) -> dict:
    """The statement that ends ``manifest``'s chain: same subject and node, no keyslot, no blobs."""
    doc = statement_of(manifest)
    doc.update(keyslot=None, blobs=[], state=STATE_DESTROYED)
    doc.pop("migration", None)
    return doc
