# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""state=exported (the source of a migration): the keyslot re-bound to the target named by the grant, written with
the unchanged blobs to a transfer bundle; a running VM is stopped first when Proxmox is asked."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.proxmox import stopped_for_migration
from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.grant import grant_from_dict
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import parse_ref
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import transfer
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.base import NodeState


def migration_record(doc) -> dict:
    if not isinstance(doc, dict) or sorted(doc) != ["not_after", "source", "target"]:
        raise InputError("state=exported needs migration: {source, target, not_after}")
    canonical.parse_timestamp(doc["not_after"], "migration.not_after")
    for field in ("source", "target"):
        validate.node_name(doc[field])
    if doc["source"] == doc["target"]:
        raise InputError(f"migration source and target are both '{doc['source']}': a VM cannot migrate to its own node")
    return doc


def manifest_ref(doc) -> dict:
    ref = parse_ref({"destroyed": False, **(doc or {})}, "manifest")
    return {"version": ref.version, "digest": ref.digest}


class Exported(NodeState):
    """Planning and writing are one pass in transfer.export_vm (check mode stops it before the TPM duplicates the
    keyslot): a separate plan() would read the keyslot and the bundle twice."""

    def _prepare(self):
        p = self.params
        return stopped_for_migration(
            self.proxmox(),
            self.vm.vmid,
            self.vm.vm_uuid,
            stop=p["stop_vm"],
            timeout=p["shutdown_timeout"],
            check_mode=self.check_mode,
        )

    def plan_and_apply(self) -> dict:
        p = self.params
        return transfer.export_vm(
            self.backend,
            self.vm,
            grant_from_dict(p["grant"], "grant"),
            migration=migration_record(p["migration"]),
            manifest=manifest_ref(p["manifest"]),
            path=p["bundle"] or transfer.bundle_path(p["state_dir"], self.vm.vmid, self.vm.vm_uuid),
            now=clock(p["now"]),
            check_mode=self.check_mode,
            prepare=self._prepare if p["pve"] else None,
        )
