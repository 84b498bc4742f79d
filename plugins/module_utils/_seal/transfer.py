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
    FormatError,
    InputError,
    IronclawError,
    PolicyError,
    VerificationError,
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

    `prepare()`, when given, runs once every check passed and the TPM made the duplicate, and before the bundle is
    written (it stops the VM): a keyslot the TPM cannot duplicate (a revoked epoch, another SRK) fails the export
    with the VM still running. What it returns is reported as `vm`.
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
    existing = read_bundle(path)
    kept = (
        existing is not None
        and existing.keyslot_id == keyslot.keyslot_id
        and existing.target_name == grant.target_name
        and existing.manifest_digest == manifest["digest"]
        and existing.migration_target == migration["target"]
        and existing.blobs == tuple(blobs)
        and _not_expired(existing, now)
    )
    sealed = None if kept or check_mode else backend.export_keyslot(keyslot, grant)
    if prepare is not None:
        summary["vm"] = prepare()
    if kept:
        return {"changed": False, "status": "already-exported", **summary, "not_after": existing.not_after}
    if check_mode:
        return {"changed": True, "status": "would-export", **summary}
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


def _same_sealed_object(backend, keyslot, bundle) -> bool:
    """The keyslot holds the bundle's VRK under the same policy, bound to this node (no TPM command)."""
    if (keyslot.keyslot_id, keyslot.policy_key_name, keyslot.policy_key_public) != (
        bundle.keyslot_id,
        bundle.policy_key_name,
        bundle.policy_key_public,
    ):
        return False
    try:
        backend.check_keyslot_node(keyslot)
    except IronclawError:
        return False
    if backend.backend == "tpm2":
        # Duplication keeps the object's public area, which commits to its sealed data and authPolicy.
        return keyslot.sealed.public == bundle.keyslot["public"]
    # Software: the import's wrap under this node's current KEK is deterministic (AES-KWP).
    return keyslot.sealed == backend.import_keyslot(bundle)


def _keyslot_here(vm: VmDir):
    """(whether the VM has a keyslot file here, that keyslot or None): one that does not parse is there, and stale."""
    try:
        keyslot = vm.keyslot(required=False)
    except FormatError:
        if os.path.islink(vm.keyslot_path):
            raise
        return True, None
    return keyslot is not None, keyslot


def _stale_files(backend, vm: VmDir, has_keyslot: bool, keyslot, bundle: Bundle) -> list[str]:
    """This node's files of the VM that are not exactly what importing the bundle leaves: a keyslot that is not the
    bundle's (or does not parse), every blob whose bytes differ from the bundle's or that the bundle does not carry
    and, beside a keyslot, every blob of the bundle that is missing."""
    carried = dict(bundle.blobs)
    stale = []
    if has_keyslot and (keyslot is None or not _same_sealed_object(backend, keyslot, bundle)):
        stale.append(os.path.basename(vm.keyslot_path))
    present = vm.blob_names()
    for name in present:
        if carried.get(name) != read_regular(vm.blob_path(name), f"blob '{name}' of VM {vm.vmid}"):
            stale.append(os.path.basename(vm.blob_path(name)))
    if has_keyslot:
        # The set is exact: a blob the bundle carries is missing here (a fresh import writes every one anyway).
        stale.extend(os.path.basename(vm.blob_path(name)) for name in sorted(carried.keys() - set(present)))
    return stale


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

    `verify(bundle)`, when given, checks the bundle against the signed manifest it was exported from. The bundle is
    authoritative (DESIGN §7 A8): this node's files count as already imported only when the keyslot holds the
    bundle's key bound here and every blob is the bundle's, byte for byte, the set exact. Otherwise a verified
    bundle replaces them (a stale copy put back from a backup, or left by an earlier stay of the VM); they are never
    kept, and never approved.
    """
    bundle = read_bundle(path)
    has_keyslot, keyslot = _keyslot_here(vm)
    if bundle is None:
        if not has_keyslot:
            raise InputError(
                f"no transfer bundle for VM {vm.vmid} at {path} and no sealed state of it on this node: "
                "export it on the source first (the migrate playbook does)"
            )
        raise VerificationError(
            f"VM {vm.vmid} has sealed state on this node but no transfer bundle at {path} says it is the VM's current "
            "state (a stale copy put back from a backup, or left by an earlier stay of the VM?). Nothing was changed "
            "and nothing approved: run the migrate playbook from the node the store places the VM on; its verified "
            "bundle replaces this state"
        )
    if (bundle.vmid, bundle.vm_uuid) != (vm.vmid, vm.vm_uuid):
        raise PolicyError(
            f"the bundle at {path} is for VM {bundle.vmid} ({bundle.vm_uuid}), not VM {vm.vmid} ({vm.vm_uuid})"
        )
    backend.check_bundle_target(bundle)
    if verify is not None:
        verify(bundle)
    stale = _stale_files(backend, vm, has_keyslot, keyslot, bundle)
    if has_keyslot and not stale:
        # A run cut short after the import: the bundle's state is here; prove it still unseals and tidy up.
        results = _test_unseal(backend, keyslot, approval, bundle.blobs)
        return {
            "changed": _install(vm, approval, check_mode),
            "status": "already-imported",
            "keyslot_id": keyslot.keyslot_id,
            "blobs": results,
            "replaced": [],
            "migration": _migration_of(bundle),
        }
    if not _not_expired(bundle, now):
        raise PolicyError(
            f"the bundle for VM {vm.vmid} was valid until {bundle.not_after}: the migration window closed. "
            "Nothing was changed; re-run the migration to export a fresh bundle"
        )
    if stale and verify is None:
        raise VerificationError(
            f"VM {vm.vmid} already has other sealed state on this node ({', '.join(stale)} differ from the bundle): "
            "nothing was changed. Only a bundle verified against its signed manifest (envelope) replaces it; or "
            "decommission or move the old state first"
        )
    sealed = backend.import_keyslot(bundle)
    imported = Keyslot(
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
    results = _test_unseal(backend, imported, approval, bundle.blobs)
    out = {"keyslot_id": bundle.keyslot_id, "blobs": results, "replaced": stale, "migration": _migration_of(bundle)}
    if check_mode:
        return {"changed": True, "status": "would-import", **out}
    vm.ensure()
    # A stale keyslot goes first, so that until the new one is written last no keyslot claims a finished import.
    if has_keyslot:
        remove_file(vm.keyslot_path)
    carried = dict(bundle.blobs)
    for name in vm.blob_names():
        if name not in carried:
            remove_file(vm.blob_path(name))
    for name, data in bundle.blobs:
        vm.write(vm.blob_path(name), data)
    _install(vm, approval, check_mode)
    # The keyslot last: its presence means the import finished. The bundle stays until the migration is
    # recorded (it says what to record); remove_bundle() then tidies up.
    vm.write(vm.keyslot_path, imported.to_bytes())
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
