# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The store head (TUF's snapshot): one signed document naming everything the store holds.

Payload ``ironclaw-store-head/1`` in a DSSE envelope of type
``application/vnd.ironclaw.store-head.v1+json``::

    {"format": ..., "version": N, "issued_at": ...,
     "vms":   {"<vm_uuid>": {"version": V, "digest": "<sha256 of the newest envelope>"}},
     "files": {"nodes/<node>.json" | "receipts/<name>.json" | "trust/root-<v>.json": "<sha256>"}}

Older manifest versions are not listed: the hash chain (``prev``) reaches them
from the newest one. The version only goes up; the controller signs a new head
after every change to the store. This file is the format and the comparison of
a head with what a store holds; who may sign a head and which head is new
enough are decided on the controller (_authority/head.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import MAX_VERSION
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import ManifestRef

HEAD_FORMAT = "ironclaw-store-head/1"
HEAD_PAYLOAD_TYPE = "application/vnd.ironclaw.store-head.v1+json"
HEAD_FILE = "head.json"
_FIELDS = {"format": str, "version": int, "issued_at": str, "vms": dict, "files": dict}
_VM_FIELDS = {"version": int, "digest": str}
FILE_NAME = re.compile(r"(nodes/[A-Za-z0-9][A-Za-z0-9._-]*|receipts/[0-9a-f-]+-[0-9]{4}|trust/root-[0-9]{8,})\.json")


@dataclass(frozen=True)
class StoreView:
    """What a store holds: each VM's newest manifest and the digest of every other file the head covers."""

    vms: dict  # vm_uuid -> ManifestRef (destroyed is not part of a head)
    files: dict  # relative path -> sha256 hex

    def to_dict(self) -> dict:
        return {
            "vms": {uuid: {"version": ref.version, "digest": ref.digest} for uuid, ref in sorted(self.vms.items())},
            "files": dict(sorted(self.files.items())),
        }


@dataclass(frozen=True)
class Head:
    version: int
    issued_at: str
    view: StoreView


def parse_view(doc: object, what: str) -> StoreView:
    """A view as a head payload (or the store module's result) spells it, strictly."""
    canonical.require_fields(doc, {"vms": dict, "files": dict}, what)
    vms = {}
    for uuid, entry in doc["vms"].items():
        try:
            canonical_uuid = validate.vm_uuid(uuid)
        except InputError as err:
            raise FormatError(f"{what}: field 'vms': {err}") from None
        if canonical_uuid != uuid:
            raise FormatError(f"{what}: field 'vms': VM uuid must be written as {canonical_uuid}, found {uuid}")
        field = f"vms.{uuid}."
        canonical.require_fields(entry, _VM_FIELDS, what, prefix=field)
        canonical.int_field(entry["version"], what, field + "version", 1, MAX_VERSION)
        canonical.hex_bytes(entry["digest"], f"{what}: field '{field}digest'", 32)
        vms[uuid] = ManifestRef(entry["version"], entry["digest"])
    files = {}
    for name, digest in doc["files"].items():
        if not FILE_NAME.fullmatch(name):
            raise FormatError(f"{what}: field 'files': {canonical.show(name)} is not a file a store holds")
        canonical.hex_bytes(digest, f"{what}: field 'files.{name}'", 32)
        files[name] = digest
    return StoreView(vms=vms, files=files)


def head_payload(version: int, issued_at: str, view: StoreView) -> bytes:
    doc = {"format": HEAD_FORMAT, "version": version, "issued_at": issued_at, **view.to_dict()}
    data = canonical.dumps(doc)
    parse_head(data, "new store head")
    return data


def parse_head(data: bytes, what: str) -> Head:
    """The head payload, strictly (signatures are checked by the caller, before this is trusted)."""
    doc = canonical.loads(data, what)
    canonical.require_format(doc, HEAD_FORMAT, what)
    canonical.require_fields(doc, _FIELDS, what)
    version = canonical.int_field(doc["version"], what, "version", 1, MAX_VERSION)
    canonical.timestamp_field(doc["issued_at"], what, "issued_at")
    view = parse_view({"vms": doc["vms"], "files": doc["files"]}, what)
    return Head(version=version, issued_at=doc["issued_at"], view=view)


def differences(head: StoreView, store: StoreView) -> list[tuple[str, str, str]]:
    """Each way the store's content departs from what its head lists: (key, kind, message naming the VM or file).

    A key is ``vm:<uuid>`` or the file's relative path, as the store names what one call wrote; the
    kind is ``deleted`` (the head lists more or newer), ``added`` or ``altered``."""
    found = []
    for uuid in sorted(set(head.vms) | set(store.vms)):
        listed, held = head.vms.get(uuid), store.vms.get(uuid)
        if held is None:
            kind, problem = "deleted", f"the head lists manifest version {listed.version}, the store holds none"
        elif listed is None:
            kind, problem = "added", f"the store holds manifest version {held.version}, the head lists no such VM"
        elif held.version < listed.version:
            kind, problem = (
                "deleted",
                f"the store's newest manifest is version {held.version}, but the head lists version {listed.version}",
            )
        elif held.version > listed.version:
            kind, problem = "added", f"the store holds manifest version {held.version}, the head lists {listed.version}"
        elif held.digest != listed.digest:
            kind, problem = "altered", f"manifest version {held.version} differs from the one the head lists"
        else:
            continue
        found.append((f"vm:{uuid}", kind, f"VM {uuid}: {problem} ({kind})"))
    for name in sorted(set(head.files) | set(store.files)):
        listed, held = head.files.get(name), store.files.get(name)
        if held is None:
            kind, problem = "deleted", "listed in the head, missing from the store"
        elif listed is None:
            kind, problem = "added", "in the store, not listed in the head"
        elif held != listed:
            kind, problem = "altered", "differs from the digest the head lists"
        else:
            continue
        found.append((name, kind, f"file {name}: {problem} ({kind})"))
    return found
