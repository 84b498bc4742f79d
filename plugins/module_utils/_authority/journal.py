# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's record of the migrations it granted.

A duplication grant is the controller's decision to move a VM from the node
its ledger places it on to one target. The controller records that decision
here when it signs the grant, in its own directory
(``<controller_dir>/migrations/<vm_uuid>.json``, canonical JSON, 0600), and the
target's unseal approval and the manifest that records the move are signed
only if they match it (DESIGN §7 A1 (c)): nothing a node or the store host can
write makes the controller approve a VM on a node it did not send it to.

One record per VM: a new grant replaces the previous one, so of two migrations
of one VM to different targets only the one granted last can complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical

JOURNAL_DIR = "migrations"
MOVE_FORMAT = "ironclaw-migration-grant/1"
_FIELDS = {
    "format": str,
    "vmid": int,
    "vm_uuid": str,
    "source": dict,
    "target": dict,
    "manifest": dict,
    "not_after": str,
    "issued_at": str,
}
_NODE_FIELDS = {"name": str, "id": str}
_MANIFEST_FIELDS = {"version": int, "digest": str}


@dataclass(frozen=True)
class GrantedMove:
    vmid: int
    vm_uuid: str
    source_name: str
    source_id: str
    target_name: str
    target_id: str
    manifest_version: int
    manifest_digest: str
    not_after: str
    issued_at: str

    def to_dict(self) -> dict:
        return {
            "format": MOVE_FORMAT,
            "vmid": self.vmid,
            "vm_uuid": self.vm_uuid,
            "source": {"name": self.source_name, "id": self.source_id},
            "target": {"name": self.target_name, "id": self.target_id},
            "manifest": {"version": self.manifest_version, "digest": self.manifest_digest},
            "not_after": self.not_after,
            "issued_at": self.issued_at,
        }


def _parse(data: bytes, what: str) -> GrantedMove:
    doc = canonical.loads(data, what)
    canonical.require_format(doc, MOVE_FORMAT, what)
    canonical.require_fields(doc, _FIELDS, what)
    for side in ("source", "target"):
        canonical.require_fields(doc[side], _NODE_FIELDS, what, prefix=f"{side}.")
        canonical.tpm_name(doc[side]["id"], f"{what}: field '{side}.id'")
    canonical.require_fields(doc["manifest"], _MANIFEST_FIELDS, what, prefix="manifest.")
    canonical.hex_bytes(doc["manifest"]["digest"], f"{what}: field 'manifest.digest'", 32)
    return GrantedMove(
        vmid=canonical.checked(validate.vmid, doc["vmid"], what, "vmid"),
        vm_uuid=canonical.checked(validate.vm_uuid, doc["vm_uuid"], what, "vm_uuid"),
        source_name=canonical.checked(validate.node_name, doc["source"]["name"], what, "source.name"),
        source_id=doc["source"]["id"],
        target_name=canonical.checked(validate.node_name, doc["target"]["name"], what, "target.name"),
        target_id=doc["target"]["id"],
        manifest_version=canonical.int_field(doc["manifest"]["version"], what, "manifest.version", 1, 2**63 - 1),
        manifest_digest=doc["manifest"]["digest"],
        not_after=canonical.timestamp_field(doc["not_after"], what, "not_after"),
        issued_at=canonical.timestamp_field(doc["issued_at"], what, "issued_at"),
    )


class MoveJournal:
    def __init__(self, controller_dir: str):
        self.controller_dir = os.path.expanduser(controller_dir)
        self.dir = os.path.join(self.controller_dir, JOURNAL_DIR)

    def path(self, vm_uuid: str) -> str:
        return os.path.join(self.dir, f"{validate.vm_uuid(vm_uuid)}.json")

    def get(self, vm_uuid: str) -> GrantedMove | None:
        path = self.path(vm_uuid)
        try:
            data = read_regular(path, "migration record", 64 * 1024)
        except FileNotFoundError:
            return None
        move = _parse(data, f"migration record {path}")
        if move.vm_uuid != vm_uuid:
            raise FormatError(f"migration record {path} names VM {move.vm_uuid}; it was altered")
        return move

    def put(self, move: GrantedMove) -> bool:
        """Record the move granted last for its VM; False if that very record is already there."""
        data = canonical.dumps(move.to_dict())
        _parse(data, "new migration record")
        path = self.path(move.vm_uuid)
        current = self.get(move.vm_uuid)
        if current is not None and current == move:
            return False
        ensure_dir(self.controller_dir, 0o700)
        ensure_dir(self.dir, 0o700)
        write_atomic(path, data, 0o600)
        return True
