# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_destroy's option set and its node state (the controller states live in the action plugin)."""

from __future__ import annotations

import contextlib

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.argspec import (
    ArgumentSpec,
    spanning_spec,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.proxmox import stop_running
from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.lock import locked
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.node import destroy_many_on_node
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend

CONTROLLER_STATES = ("planned", "revoked", "receipted")

REQUIRED_IF = [
    ("state", "revoked", ("vmid", "vm_uuid")),
    ("state", "receipted", ("vmid", "vm_uuid", "locations", "policy_key")),
]


def argument_spec() -> ArgumentSpec:
    """ironclaw_destroy's options (the module and its action plugin)."""
    return (
        spanning_spec()
        .merge(ArgumentSpec(required_if=REQUIRED_IF))
        .update_argspec(
            state={"type": "str", "default": "absent", "choices": ["absent", "planned", "revoked", "receipted"]},
            vms={"type": "list", "elements": "dict"},
            cluster={"type": "str", "default": "default"},
            locations={"type": "list", "elements": "dict"},
            policy_key={"type": "dict", "no_log": False},
            chain_end={"type": "dict"},
            stored_receipts={"type": "list", "elements": "dict"},
            now={"type": "str"},
            pve={"type": "bool", "default": False},
            stop_vm={"type": "bool", "default": False},
            shutdown_timeout={"type": "int", "default": 60},
            delete_vm={"type": "bool", "default": False},
            # With state=planned: the VMs the store knows under vmid (ironclaw_manifest listed with vmid), and where.
            found={"type": "list", "elements": "dict"},
            # Read by the action plugin (state=absent): renew the approvals of the VMs that stay on the node.
            reapprove={"type": "dict"},
        )
    )


def proxmox_before(p: dict, cli, vmid: int, vm_uuid: str, check_mode: bool) -> dict:
    """Before anything is destroyed: the VM, if it is this node's and still this VM (VMIDs are reused), must be
    stopped, and is stopped only with stop_vm. Returns what Proxmox said, for the evidence."""
    info = cli.vm_info(vmid)
    if not info.exists or info.node != cli.node:
        return {"vm": "not on this node"}
    if (info.uuid or "").lower() != vm_uuid:
        return {"vm": f"VMID {vmid} on this node is now another VM (uuid {info.uuid}): left alone"}
    if info.status == "running":
        return {
            "vm": stop_running(
                cli,
                vmid,
                stop=p["stop_vm"],
                timeout=p["shutdown_timeout"],
                check_mode=check_mode,
                refusal=f"VM {vmid} is running on node {cli.node}: nothing was destroyed. Stop it first, or allow "
                "decommission to shut it down (then stop it) with destroy_stop_vm=true",
            )
        }
    return {"vm": "stopped"}


def destroy_node(p: dict, check_mode: bool, cli=None) -> dict:
    if p["state"] in CONTROLLER_STATES:
        raise InputError(
            f"state={p['state']} runs on the controller through the collection's action plugin; "
            "call the module by its full name ironclaw.sealed.ironclaw_destroy"
        )
    if p["vms"] is not None:
        return destroy_locked(p, several_vms(p), check_mode)
    if p["vmid"] is None or p["vm_uuid"] is None:
        raise InputError("give the VM: vmid and vm_uuid (or vms, a list of them)")
    vmid, vm_uuid = validate.vmid(p["vmid"]), validate.vm_uuid(p["vm_uuid"])
    proxmox = proxmox_before(p, cli, vmid, vm_uuid, check_mode) if cli is not None else {}
    result = destroy_locked(p, [(vmid, vm_uuid)], check_mode)
    (only,) = result.pop("results")
    result.update(status=only["status"], evidence=only["evidence"])
    if proxmox:
        result["proxmox"] = proxmox
        if p["delete_vm"] and proxmox["vm"] not in ("not on this node",) and "another VM" not in proxmox["vm"]:
            if check_mode:
                proxmox["deleted"] = "would delete the VM (qm destroy)"
            else:
                proxmox["deleted"] = cli.destroy(vmid)
                result["changed"] = result["changed"] or proxmox["deleted"]
    return result


def several_vms(p: dict) -> list[tuple[int, str]]:
    """The VMs of O(vms), each checked; refused together with vmid/vm_uuid or with Proxmox actions."""
    if p["vmid"] is not None or p["vm_uuid"] is not None:
        raise InputError("give either vmid and vm_uuid (one VM) or vms (several), not both")
    if p["pve"] or p["delete_vm"]:
        raise InputError("vms destroys the sealed state of VMs that left this node: pve and delete_vm take one VM")
    if not p["vms"]:
        raise InputError("vms is empty: give at least one VM")
    out = []
    for number, entry in enumerate(p["vms"], 1):
        if not isinstance(entry, dict) or "vmid" not in entry or "vm_uuid" not in entry:
            raise InputError(f"vms entry {number} needs vmid and vm_uuid")
        out.append((validate.vmid(entry["vmid"]), validate.vm_uuid(entry["vm_uuid"])))
    return out


def destroy_locked(p: dict, vms: list[tuple[int, str]], check_mode: bool) -> dict:
    """Destroy the VMs under one epoch bump. Outside check mode with the node lock held exclusively (the bump must
    not interleave with any seal or unseal on this node) and each VM's lock."""
    now = canonical.utc_timestamp(clock(p["now"]))
    with open_backend(p["backend"], tcti=p["tcti"], state_dir=p["state_dir"]) as backend:
        if check_mode:
            return destroy_many_on_node(backend, p["state_dir"], vms, now=now, check_mode=True)
        with contextlib.ExitStack() as stack:
            stack.enter_context(locked(p["state_dir"], "node", p["lock_timeout"]))
            for vmid in sorted({vmid for vmid, _uuid in vms}):
                stack.enter_context(locked(p["state_dir"], f"vm-{vmid}", p["lock_timeout"]))
            return destroy_many_on_node(backend, p["state_dir"], vms, now=now, check_mode=False)
