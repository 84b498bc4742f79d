# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rules of a migration, decided on the controller from what the steps read once.

One vocabulary: a migration moves the sealed state of one or more VMs (the fleet) from the source node to the
target node. It is *pending* (nothing on the target yet), *imported* (the target holds this migration's state and
bundle, the store does not record it yet) or *recorded* (the store's newest manifest records the move); a recorded
move is then *revoked* on the source. Every function here is pure (clocks are passed in) and raises the
collection's typed errors with the real cause; "Nothing was changed." is appended by the caller's refusal.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    DecommissionedError,
    InputError,
    PlacementError,
    PolicyError,
    UnattestedTargetError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical

NOTHING_CHANGED = "Nothing was changed."
_VMID = re.compile(r"^[1-9][0-9]{2,8}$")


@dataclasses.dataclass(frozen=True)
class FleetVm:
    vmid: int
    vm_uuid: str  # "" when Proxmox settles it

    def to_dict(self) -> dict:
        return {"vmid": self.vmid, "vm_uuid": self.vm_uuid}


@dataclasses.dataclass(frozen=True)
class MoveRequest:
    source: str
    target: str
    vms: tuple[FleetVm, ...]

    def to_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "vms": [vm.to_dict() for vm in self.vms]}


def _given(value) -> bool:
    return value is not None and value != ""


def _entries(vmid, vm_uuid, vms) -> list:
    if _given(vmid):
        return [{"vmid": vmid, "vm_uuid": vm_uuid if _given(vm_uuid) else ""}]
    if isinstance(vms, str):
        return vms.split(",") if vms.strip() else []
    if isinstance(vms, (int, dict)):
        return [vms]
    if not isinstance(vms, (list, tuple)):
        raise InputError(
            f"ironclaw_vms must be a list of VMIDs or of {{vmid, vm_uuid}} entries, not {type(vms).__name__}"
        )
    return list(vms)


def _fleet_vm(entry) -> tuple[str, str]:
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - {"vmid", "vm_uuid"})
        if unknown:
            raise InputError(
                f"unknown key(s) {', '.join(map(str, unknown))} in an ironclaw_vms entry: give vmid and vm_uuid"
            )
        vmid, vm_uuid = entry.get("vmid"), entry.get("vm_uuid")
    else:
        vmid, vm_uuid = entry, ""
    vmid = "" if vmid is None or isinstance(vmid, bool) else str(vmid).strip()
    return vmid, "" if vm_uuid is None else str(vm_uuid).strip().lower()


def parse_request(variables: dict, inventory) -> MoveRequest:
    """The migration asked for by the play's variables (ironclaw_vmid or ironclaw_vms, ironclaw_vm_uuid,
    ironclaw_source, ironclaw_target); `inventory` is the set of inventory host names."""
    vmid, vms, vm_uuid = (variables.get(k) for k in ("ironclaw_vmid", "ironclaw_vms", "ironclaw_vm_uuid"))
    source, target = variables.get("ironclaw_source"), variables.get("ironclaw_target")
    _one_form(vmid, vm_uuid, vms)
    if (not _given(vmid) and vms is None) or not _given(source) or not _given(target):
        raise InputError(
            "Give the VM (or VMs) and both nodes: -e ironclaw_vmid=<VMID> (or -e ironclaw_vms=<VMID>,<VMID>,...) "
            "-e ironclaw_source=<host> -e ironclaw_target=<host>."
        )
    source, target = str(source), str(target)
    if source == target:
        raise PlacementError(f"Source and target are both {source}: a VM cannot migrate to the node it is on.")
    for role, host in (("source", source), ("target", target)):
        if host not in inventory:
            raise InputError(f"Unknown {role} {host}: it is not in the inventory.")
    return MoveRequest(source, target, parse_fleet(vmid, vm_uuid, vms))


def _one_form(vmid, vm_uuid, vms) -> None:
    if _given(vmid) and vms is not None:
        raise InputError("Give ironclaw_vmid (one VM) or ironclaw_vms (several), not both.")
    if vms is not None and _given(vm_uuid):
        raise InputError("With ironclaw_vms, give each VM's uuid in its entry ({vmid, vm_uuid}), not ironclaw_vm_uuid.")


def parse_fleet(vmid, vm_uuid, vms) -> tuple[FleetVm, ...]:
    """The VMs a run names: one (`vmid`, `vm_uuid`) or several (`vms`: a list of VMIDs or of {vmid, vm_uuid}
    entries, one entry, or "VMID,VMID,..."), each named once; the typed form migrate and provision share."""
    _one_form(vmid, vm_uuid, vms)
    if not _given(vmid) and vms is None:
        raise InputError("Give the VM (or VMs): -e ironclaw_vmid=<VMID> (or -e ironclaw_vms=<VMID>,<VMID>,...).")
    entries = [_fleet_vm(entry) for entry in _entries(vmid, vm_uuid, vms)]
    if not entries:
        raise InputError("ironclaw_vms is empty: name at least one VM.")
    bad = [vmid for vmid, _uuid in entries if not _VMID.match(vmid)]
    if bad:
        raise InputError(f"Not a VMID (100 to 999999999): {', '.join(bad)}.")
    if len({vmid for vmid, _uuid in entries}) != len(entries):
        raise InputError("A VM is listed twice: name each VM once.")
    return tuple(FleetVm(int(vmid), validate.vm_uuid(uuid) if uuid else "") for vmid, uuid in entries)


def window_end(now: datetime, minutes) -> datetime:
    """The migration's not_after: the clock is read once, by the caller. (The grant rule bounds the window.)"""
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 1:
        raise InputError(
            f"ironclaw_migration_window_minutes must be a whole number of minutes, at least 1, not {minutes!r}"
        )
    return now.replace(microsecond=0) + timedelta(minutes=minutes)


def settle_identity(vm: FleetVm, *, pve: bool, proxmox: dict | None, host: str, nodes: list[str]) -> dict:
    """A VM's identity {vmid, uuid, ctime, node, source, status}: from Proxmox (the authority, asked on `host`,
    which must hold the VM on one of `nodes`), or without Proxmox from the uuid given."""
    if not pve:
        if not vm.vm_uuid:
            raise InputError(
                f"With ironclaw_pve=false the VM's identity comes from variables: give the uuid of VM {vm.vmid} "
                "(ironclaw_vm_uuid, or vm_uuid in its ironclaw_vms entry: the uuid of its smbios1 setting)."
            )
        return {
            "vmid": vm.vmid,
            "uuid": vm.vm_uuid,
            "ctime": None,
            "node": host,
            "source": "variables",
            "status": "unknown",
        }
    info = (proxmox or {}).get("vm") or {}
    asked = (proxmox or {}).get("pve_node") or host
    if not info.get("exists"):
        raise PlacementError(
            f"VM {vm.vmid} does not exist in the Proxmox cluster (asked on node {asked}, inventory host {host}): "
            "check the VMID."
        )
    if info["node"] not in nodes:
        raise PlacementError(
            f"VM {vm.vmid} is on node {info['node']}, not on node {' or '.join(nodes)} (inventory host {host}): run "
            "against the node that holds it."
        )
    if vm.vm_uuid and vm.vm_uuid != (info.get("uuid") or "").lower():
        raise PlacementError(
            f"VM {vm.vmid} on node {info['node']} has uuid {info.get('uuid')} in Proxmox, not {vm.vm_uuid} as given: "
            "VMIDs are reused, so this may be another VM than you mean. Check the VM, then drop the uuid (Proxmox's "
            "is used) or give the right one."
        )
    return {
        "vmid": vm.vmid,
        "uuid": (info.get("uuid") or "").lower(),
        "ctime": info.get("ctime"),
        "node": info["node"],
        "source": "proxmox",
        "status": info.get("status", "unknown"),
    }


def status_of(ledger, vmid: int, source: str, target: str, *, target_keyslot: bool, target_bundle: bool) -> str:
    """Where this VM's migration stands, from its verified ledger and what the target holds; refuses a VM the
    store does not place on the source (or record as moved from it to the target)."""
    newest = ledger.newest
    if newest is None:
        raise PlacementError(f"The store has no manifest for VM {vmid} ({ledger.vm_uuid}): provision it first.")
    if newest.destroyed:
        raise DecommissionedError(f"VM {vmid} was decommissioned.")
    moved = newest.migration
    if newest.node.name == target and moved is not None and moved.source == source:
        return "recorded"
    if newest.node.name != source:
        raise PlacementError(
            f"VM {vmid} is on node {newest.node.name} according to the store (manifest v{newest.version}), not on the "
            f"source {source}: run the migration from there."
        )
    # A keyslot on the target counts as this migration's import only beside the bundle it came from: alone it may
    # be a stale copy put back from a backup, which only a fresh, verified bundle replaces (A8).
    return "imported" if target_keyslot and target_bundle else "pending"


ALLOW_TOFU = "ironclaw_allow_tofu_targets: true"


def check_target(record, facts: dict, *, target: str, source_backend: str, allow_tofu: bool = False) -> None:
    """The target must be enrolled (its signed record verified by the caller), on the source's backend, attested
    (a tpm2 target whose record proves a genuine TPM: EK trusted by ca or pin, DESIGN §8; tofu or unattested only
    with ``allow_tofu``), and answer with the enrolled SRK. Each refusal names its own cause."""
    if record is None:
        raise PlacementError(
            f"The target {target} is not enrolled (no record in the store): run ironclaw.sealed.enroll for it first."
        )
    if record.backend != source_backend:
        raise PlacementError(
            f"The target {target} is enrolled with the {record.backend} backend, the source uses {source_backend}: a "
            "keyslot moves only between nodes of the same backend."
        )
    if facts.get("backend") != record.backend:
        raise PlacementError(
            f"The target {target} was enrolled with the {record.backend} backend, but its inventory settings "
            f"(ironclaw_backend) name {facts.get('backend')}: fix the inventory."
        )
    if record.backend == "tpm2" and record.trust not in ("ca", "pin") and not allow_tofu:
        why = (
            "was enrolled before attestation: its signed record carries no proof"
            if record.trust is None
            else "was enrolled with ironclaw_ek_trust=tofu: nothing proves"
        )
        raise UnattestedTargetError(
            f"The target {target} {why} that its SRK lives in a genuine TPM, and a VM's root key handed to a key "
            f"outside one is readable by whoever holds it. Enroll {target} again with ironclaw_ek_trust ca "
            f"(ironclaw_ek_ca_dir) or pin (ironclaw_ek_pin), or allow such targets explicitly with {ALLOW_TOFU}."
        )
    if not facts.get("provisioned") or facts.get("srk_name") != record.srk_name:
        raise PlacementError(
            f"The target {target}'s SRK is {facts.get('srk_name') or '(none)'}, but it was enrolled with "
            f"{record.srk_name} (TPM cleared or replaced?): re-enroll it deliberately."
        )


def check_window(vmid: int, manifest, not_after: datetime) -> None:
    """The VM's newest manifest must outlive the migration window (the target verifies the bundle against it)."""
    if canonical.parse_timestamp(manifest.expires, "manifest expires") <= not_after:
        raise PolicyError(
            f"VM {vmid}'s manifest v{manifest.version} expires at {manifest.expires}, before the migration's "
            f"not_after {canonical.utc_timestamp(not_after)}: re-run ironclaw.sealed.provision to re-issue it first."
        )


def check_running(identity: dict, *, pve: bool, stop_vm: bool) -> None:
    """A running VM is refused before anything is signed, unless the migration may shut it down."""
    if pve and not stop_vm and identity.get("status") == "running":
        raise PolicyError(
            f"VM {identity['vmid']} is running on node {identity['node']}: nothing was changed on either node. Stop "
            "it first, or let the migration shut it down (then stop it) with ironclaw_stop_vm=true"
        )


def recorded_version(ledger, vmid: int, source: str, target: str) -> int:
    """Before a source copy is revoked the store must record the move to the target; the version that does."""
    newest = ledger.newest
    if (
        newest is None
        or newest.destroyed
        or newest.node.name != target
        or newest.migration is None
        or newest.migration.source != source
    ):
        raise PlacementError(
            f"The store does not record VM {vmid} on {target} yet: no source copy was revoked (it is the working "
            "one). Re-run the migration."
        )
    return newest.version
