# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Moving one VM's sealed state to another node: export on the source, import on the target.

Export re-binds the keyslot to the target (TPM2_Duplicate under a signed grant, or the VRK wrapped to the
target's enrollment key) and packs it with the unchanged blobs into a transfer bundle file. Import checks
the bundle, re-binds the keyslot under this node (TPM2_Import), test-unseals every blob in memory with an
approval for this node, and only then writes anything. Neither side ever changes the source's files:
revoking the source is a separate, later step (an epoch bump) once the target has verified.
"""

from __future__ import annotations

import os
from datetime import datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    InputError,
    IronclawError,
    PolicyError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    remove_file,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.blob import (
    check_blob_identity,
    decrypt_blob,
    parse_blob,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.bundle import Bundle, parse_bundle
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.keyslot import Keyslot
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.engine import approval_differs
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir

TRANSFER_DIR = "transfer"
# A bundle carries every blob of a VM; this bounds what a node reads back.
MAX_BUNDLE_SIZE = 256 * 1024 * 1024


def bundle_path(state_dir: str, vmid: int, vm_uuid: str) -> str:
    """Where a node keeps a VM's bundle: the source's outgoing one, the target's incoming one."""
    return os.path.join(state_dir, TRANSFER_DIR, f"{vmid}-{vm_uuid}.bundle.json")


def read_bundle(path: str) -> Bundle | None:
    try:
        data = read_regular(path, "transfer bundle", MAX_BUNDLE_SIZE)
    except FileNotFoundError:
        return None
    return parse_bundle(data, f"transfer bundle {path}")


def _not_expired(bundle: Bundle, now: datetime) -> bool:
    return canonical.parse_timestamp(bundle.not_after, "bundle not_after") > now


def export_vm(
    backend,
    vm: VmDir,
    grant,
    *,
    migration: dict,
    manifest: dict,
    path: str,
    now: datetime,
    check_mode: bool,
    prepare=None,
) -> dict:
    """Write the VM's transfer bundle for the grant's target; an intact, unexpired one is kept as it is.

    `prepare()`, when given, runs once every check passed and before the bundle is written (it stops the VM);
    what it returns is reported as `vm`.
    """
    keyslot = vm.keyslot(required=False)
    if keyslot is None:
        raise InputError(f"VM {vm.vmid} has no sealed state on this node ({vm.path}): nothing to export")
    backend.check_keyslot_node(keyslot)
    if not keyslot.migratable:
        raise PolicyError(
            f"VM {vm.vmid}'s keyslot was created with migratable=false: its secrets can never leave this node's "
            "TPM (single-system secrets). Nothing was changed; to move the VM, re-provision it on the target"
        )
    backend.check_grant(keyslot, grant)
    not_after = canonical.parse_timestamp(migration["not_after"], "migration not_after")
    if not_after <= now:
        raise InputError(f"the migration's not_after ({migration['not_after']}) has passed: nothing to export")
    blobs = []
    for name in vm.blob_names():
        what = f"blob '{name}' of VM {vm.vmid}"
        data = read_regular(vm.blob_path(name), what)
        header = parse_blob(data, what).header
        check_blob_identity(
            header, vmid=vm.vmid, vm_uuid=vm.vm_uuid, name=name, keyslot_id=keyslot.keyslot_id, what=what
        )
        blobs.append((name, data))
    if not blobs:
        raise InputError(f"VM {vm.vmid} has a keyslot but no sealed secrets on this node: nothing to export")
    summary = {
        "path": path,
        "keyslot_id": keyslot.keyslot_id,
        "target": grant.target_name.hex(),
        "blobs": [name for name, _data in blobs],
        "manifest_version": manifest["version"],
        "not_after": migration["not_after"],
    }
    if prepare is not None:
        summary["vm"] = prepare()
    existing = read_bundle(path)
    if (
        existing is not None
        and existing.keyslot_id == keyslot.keyslot_id
        and existing.target_name == grant.target_name
        and existing.manifest_digest == manifest["digest"]
        and existing.migration_target == migration["target"]
        and existing.blobs == tuple(blobs)
        and _not_expired(existing, now)
    ):
        return {"changed": False, "status": "already-exported", **summary, "not_after": existing.not_after}
    if check_mode:
        return {"changed": True, "status": "would-export", **summary}
    sealed = backend.export_keyslot(keyslot, grant)
    bundle = Bundle(
        vmid=vm.vmid,
        vm_uuid=vm.vm_uuid,
        keyslot_id=keyslot.keyslot_id,
        backend=backend.backend,
        source_name=keyslot.node_name,
        target_name=grant.target_name,
        created=canonical.utc_timestamp(now),
        policy_key_name=keyslot.policy_key_name,
        policy_key_public=keyslot.policy_key_public,
        keyslot=sealed,
        blobs=tuple(blobs),
        manifest_version=manifest["version"],
        manifest_digest=manifest["digest"],
        migration_source=migration["source"],
        migration_target=migration["target"],
        not_after=migration["not_after"],
    )
    ensure_dir(os.path.dirname(path), 0o700)
    write_atomic(path, bundle.to_bytes(), 0o600)
    return {"changed": True, "status": "exported", **summary}


def _imported_already(backend, vm: VmDir, bundle: Bundle | None):
    """This node's keyslot for the VM when it holds the bundle's (or, without a bundle, any) keyslot."""
    keyslot = vm.keyslot(required=False)
    if keyslot is None:
        return None
    backend.check_keyslot_node(keyslot)
    if bundle is not None and keyslot.keyslot_id != bundle.keyslot_id:
        raise InputError(
            f"VM {vm.vmid} already has other sealed state on this node (keyslot {keyslot.keyslot_id}, the bundle "
            f"carries {bundle.keyslot_id}): nothing was changed. Decommission or move the old state first"
        )
    return keyslot


def _test_unseal(backend, keyslot, approval, blobs) -> list[dict]:
    """Every blob authenticates under the VRK: in memory, nothing written; raises naming the blobs that do not."""
    vrk = backend.unseal(keyslot, approval)
    results, failed = [], []
    for name, data in blobs:
        what = f"blob '{name}' of VM {keyslot.vmid}"
        try:
            parsed = parse_blob(data, what)
            check_blob_identity(
                parsed.header,
                vmid=keyslot.vmid,
                vm_uuid=keyslot.vm_uuid,
                name=name,
                keyslot_id=keyslot.keyslot_id,
                what=what,
            )
            decrypt_blob(vrk, parsed, what)
            results.append({"name": name, "ok": True, "generation": parsed.header.generation})
        except IronclawError as exc:
            failed.append(str(exc))
    if failed:
        raise PolicyError(f"VM {keyslot.vmid}: the transferred state does not unseal: {'; '.join(failed)}")
    return results


def import_vm(backend, vm: VmDir, approval, *, path: str, now: datetime, check_mode: bool, verify=None) -> dict:
    """Import the bundle at `path` under this node, prove it unseals, then write the keyslot last.

    `verify(bundle)`, when given, checks the bundle against the signed manifest it was exported from.
    """
    bundle = read_bundle(path)
    keyslot = _imported_already(backend, vm, bundle)
    if keyslot is not None:
        # A run cut short after the import: the state is here; prove it still unseals and tidy up.
        blobs = [(name, read_regular(vm.blob_path(name), f"blob '{name}'")) for name in vm.blob_names()]
        results = _test_unseal(backend, keyslot, approval, blobs)
        return {
            "changed": _install(vm, approval, check_mode),
            "status": "already-imported",
            "keyslot_id": keyslot.keyslot_id,
            "blobs": results,
            "migration": _migration_of(bundle),
        }
    if bundle is None:
        raise InputError(
            f"no transfer bundle for VM {vm.vmid} at {path} and no sealed state of it on this node: "
            "export it on the source first (the migrate playbook does)"
        )
    if (bundle.vmid, bundle.vm_uuid) != (vm.vmid, vm.vm_uuid):
        raise PolicyError(
            f"the bundle at {path} is for VM {bundle.vmid} ({bundle.vm_uuid}), not VM {vm.vmid} ({vm.vm_uuid})"
        )
    backend.check_bundle_target(bundle)
    if not _not_expired(bundle, now):
        raise PolicyError(
            f"the bundle for VM {vm.vmid} was valid until {bundle.not_after}: the migration window closed. "
            "Nothing was changed; re-run the migration to export a fresh bundle"
        )
    if verify is not None:
        verify(bundle)
    for name in vm.blob_names():
        header = vm.read_blob(name).header
        if header.keyslot_id != bundle.keyslot_id:
            raise InputError(
                f"{vm.blob_path(name)} belongs to another keyslot of VM {vm.vmid} ({header.keyslot_id}): "
                "nothing was changed; move it aside (keep it as evidence) and re-run"
            )
    sealed = backend.import_keyslot(bundle)
    keyslot = Keyslot(
        vmid=vm.vmid,
        vm_uuid=vm.vm_uuid,
        keyslot_id=bundle.keyslot_id,
        created=canonical.utc_timestamp(now),
        migratable=True,
        node_name=backend.identity()[0],
        policy_key_name=bundle.policy_key_name,
        policy_key_public=bundle.policy_key_public,
        sealed=sealed,
    )
    results = _test_unseal(backend, keyslot, approval, bundle.blobs)
    out = {"keyslot_id": bundle.keyslot_id, "blobs": results, "migration": _migration_of(bundle)}
    if check_mode:
        return {"changed": True, "status": "would-import", **out}
    vm.ensure()
    for name, data in bundle.blobs:
        vm.write(vm.blob_path(name), data)
    _install(vm, approval, check_mode)
    # The keyslot last: its presence means the import finished. The bundle stays until the migration is
    # recorded (it says what to record); remove_bundle() then tidies up.
    vm.write(vm.keyslot_path, keyslot.to_bytes())
    return {"changed": True, "status": "imported", **out}


def _migration_of(bundle: Bundle | None) -> dict | None:
    if bundle is None:
        return None
    return {"source": bundle.migration_source, "target": bundle.migration_target, "not_after": bundle.not_after}


def _install(vm: VmDir, approval, check_mode: bool) -> bool:
    if not approval_differs(vm.approval(required=False), approval):
        return False
    if not check_mode:
        vm.ensure()
        vm.write(vm.approval_path, approval.to_bytes())
    return True


def remove_bundle(path: str, check_mode: bool) -> bool:
    if not os.path.lexists(path):
        return False
    if not check_mode:
        remove_file(path)
    return True
