# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Destroying VMs' sealed state on a node: the node's epoch (once for all of them), then their files.

Removing files is not erasure (SSD, copy-on-write, Ceph, backups keep copies).
What makes every copy useless is cryptographic: the epoch bump revokes every
approval ever signed for this node (tpm2), or erases the KEK the copies are
wrapped under (software); and the VM's policy key, destroyed on the
controller, can never sign a new approval. A record under
`<state_dir>/destroyed/<vm_uuid>.json` makes a re-run a no-op and is the
evidence for the receipt.
"""

from __future__ import annotations

import glob
import os
import stat

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    BackendError,
    InputError,
    IronclawError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    fsync_dir,
    read_regular,
    remove_file,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.keyslot import parse_keyslot
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir

RECORD_FORMAT = "ironclaw-destruction-record/1"


def record_path(state_dir: str, vm_uuid: str) -> str:
    return os.path.join(state_dir, "destroyed", f"{vm_uuid}.json")


def read_record(state_dir: str, vm_uuid: str) -> dict | None:
    try:
        return canonical.loads(
            read_regular(record_path(state_dir, vm_uuid), "destruction record"), "destruction record"
        )
    except FileNotFoundError:
        return None


def vm_files(vm: VmDir) -> list[str]:
    """Every file of the VM's directory (names), refusing anything that is not a plain file."""
    if not vm.exists():
        return []
    names = []
    for entry in sorted(os.listdir(vm.path)):
        st = os.lstat(os.path.join(vm.path, entry))
        if not stat.S_ISREG(st.st_mode):
            raise InputError(
                f"{os.path.join(vm.path, entry)} is not a regular file (a symlink or directory); "
                "refusing to destroy through it: remove it by hand after checking what it points to"
            )
        names.append(entry)
    return names


def keyslot_id(vm: VmDir) -> str | None:
    try:
        data = read_regular(vm.keyslot_path, "keyslot")
    except FileNotFoundError:
        return None
    keyslot = parse_keyslot(data, vm.keyslot_path)
    if keyslot.vm_uuid != vm.vm_uuid:
        raise InputError(
            f"{vm.path} holds VM {keyslot.vmid} ({keyslot.vm_uuid}), not {vm.vm_uuid}: refusing to destroy another "
            "VM's state (VMIDs are reused; check the uuid)"
        )
    return keyslot.keyslot_id


def remove_vm_files(vm: VmDir, names: list[str]) -> None:
    """Unlink each file (never through a symlink), fsync, then remove the empty directory."""
    for name in names:
        remove_file(os.path.join(vm.path, name))
    if os.path.isdir(vm.path) and not os.listdir(vm.path):
        os.rmdir(vm.path)
        fsync_dir(vm.state_dir)


def surviving_vms(state_dir: str, exclude_uuids: set[str], epoch: int | None = None) -> tuple[list[dict], list[dict]]:
    """(survivors, unusable): the other VMs sealed on this node, which need a new approval (same PCR selection)
    after the epoch bump, and the keyslots that cannot serve any VM.

    A keyslot.json (or approval.json) that does not parse, or a software keyslot wrapped under another KEK version
    than `epoch` (a stale copy put back from a backup), is reported as ``{path, reason}`` and never blocks the
    revocation of the VMs being destroyed.
    """
    survivors, unusable = [], []
    for path in sorted(glob.glob(os.path.join(state_dir, "[0-9]*", "keyslot.json"))):
        try:
            keyslot = parse_keyslot(read_regular(path, "keyslot"), path)
            if keyslot.vm_uuid in exclude_uuids:
                continue
            if keyslot.backend == "software" and epoch is not None and keyslot.sealed.kek_version != epoch:
                raise BackendError(
                    f"it is wrapped under node KEK version {keyslot.sealed.kek_version}, not the node's {epoch}: "
                    "a stale copy (an epoch bump revoked it)"
                )
            approval = VmDir(state_dir, keyslot.vmid, keyslot.vm_uuid).approval(required=False)
        except IronclawError as exc:
            unusable.append({"path": path, "reason": str(exc)})
            continue
        pcrs = approval.pcrs.selection if approval is not None and approval.pcrs else None
        survivors.append({"vmid": keyslot.vmid, "vm_uuid": keyslot.vm_uuid, "pcrs": pcrs})
    return survivors, unusable


def _merged(*reports: list[dict]) -> list[dict]:
    """One entry per keyslot path, the first report's reason first."""
    seen, out = set(), []
    for report in reports:
        for entry in report:
            if entry["path"] not in seen:
                seen.add(entry["path"])
                out.append(entry)
    return sorted(out, key=lambda entry: entry["path"])


def destroy_on_node(backend, state_dir: str, vmid: int, vm_uuid: str, *, now: str, check_mode: bool) -> dict:
    """Plan, and outside check mode do, the destruction of one VM on this node."""
    result = destroy_many_on_node(backend, state_dir, [(vmid, vm_uuid)], now=now, check_mode=check_mode)
    (only,) = result.pop("results")
    return {**result, "status": only["status"], "evidence": only["evidence"]}


def destroy_many_on_node(backend, state_dir: str, vms, *, now: str, check_mode: bool) -> dict:
    """Destroy several VMs on this node under one epoch bump (a fleet migrating away, one revocation).

    Every VM is checked (its folder holds only plain files of this very VM) before anything is removed; then the
    epoch is bumped once, then the files of every VM not destroyed yet go, then each VM's record is written. A run
    cut in between finds the VMs without a record and bumps again: a second bump revokes nothing that should live.
    Another VM's bad keyslot never blocks it: it is reported in ``unusable`` and left out of ``survivors``.
    """
    results, pending = [], []
    for vmid, vm_uuid in vms:
        vm = VmDir(state_dir, vmid, vm_uuid)
        if any(r["vm_uuid"] == vm.vm_uuid for r in results):
            raise InputError(f"VM {vm.vmid} ({vm.vm_uuid}) is listed twice: name each VM once")
        record = read_record(state_dir, vm.vm_uuid)
        names = vm_files(vm)
        if record is not None and not names:
            results.append({"vmid": vm.vmid, "vm_uuid": vm.vm_uuid, "status": "already-destroyed", "evidence": record})
            continue
        evidence = {
            "format": RECORD_FORMAT,
            "vmid": vm.vmid,
            "vm_uuid": vm.vm_uuid,
            "backend": backend.backend,
            "keyslot_id": keyslot_id(vm),
            "files_removed": names,
            "epoch_before": None,
            "epoch_after": None,
            "tpm_objects": "none persistent: keyslot objects are loaded for one operation and flushed"
            if backend.backend == "tpm2"
            else "none: software backend",
            "destroyed_at": now,
        }
        status = "would-destroy" if check_mode else "destroyed"
        results.append({"vmid": vm.vmid, "vm_uuid": vm.vm_uuid, "status": status, "evidence": evidence})
        pending.append((vm, evidence))
    if not results:
        raise InputError("no VM to destroy: give at least one")
    gone = {r["vm_uuid"] for r in results}
    epoch_before = backend.epoch()
    if not pending or check_mode:
        survivors, unusable = surviving_vms(state_dir, gone, epoch_before)
        for _vm, evidence in pending:
            evidence["epoch_before"] = epoch_before
        status = "would-destroy" if pending else "already-destroyed"
        return {
            "changed": bool(pending),
            "status": status,
            "results": results,
            "survivors": survivors,
            "unusable": unusable,
        }
    for _vm, evidence in pending:
        evidence["epoch_before"] = epoch_before
    # The bump first, the files after: a run cut in between leaves files that are already revoked (and no record),
    # and the re-run bumps again and removes them. A software bump rewraps every other keyslot on disk (not those
    # of the VMs being destroyed) and erases the old KEK; one it cannot rewrap is reported, never a blocker.
    epoch_after, unwrappable = backend.revoke([vm.path for vm, _evidence in pending])
    for vm, evidence in pending:
        remove_vm_files(vm, evidence["files_removed"])
    ensure_dir(os.path.join(state_dir, "destroyed"), 0o700)
    for vm, evidence in pending:
        evidence["epoch_after"] = epoch_after
        write_atomic(record_path(state_dir, vm.vm_uuid), canonical.dumps(evidence))
    survivors, unusable = surviving_vms(state_dir, gone, epoch_after)
    return {
        "changed": True,
        "status": "destroyed",
        "results": results,
        "survivors": survivors,
        "unusable": _merged(unwrappable, unusable),
    }
