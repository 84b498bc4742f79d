# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What provisioning may act on, decided before anything is created or signed (the provision step action).

- ``vm_identity``: the VM whose keyslot, approval and manifests are bound: the one Proxmox on the node
  reports (and any uuid or creation time given must agree with it), or with ``pve`` off the one given.
- ``record_here``: whether a re-approval on a node (after an epoch bump) records a new version for a VM.
- ``placed_here``: whether the VM's verified ledger places it, active, on a node (a restore from backup there).
- ``secret_request``: the secrets asked for, each ``{name, src}`` (a file on the controller) or
  ``{name, content}``; every file is there before anything happens.

Refusals are typed (ProxmoxError, InputError) and say what was found and what to do.
"""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    DecommissionedError,
    InputError,
    PlacementError,
    ProxmoxError,
)

SECRETS_SHAPE = (
    "The seal role needs ironclaw_vmid and ironclaw_secrets as a non-empty list of {name, src} or {name, content}."
)


def vm_identity(
    vmid,
    *,
    node_name: str,
    uuid: str = "",
    ctime: int | None = None,
    pve: dict | None = None,
    vm_nodes: tuple | list = (),
) -> dict:
    """The VM's identity {vmid, uuid, ctime, node, source, status}.

    ``pve`` is what Proxmox on the node said ({vm: {exists, uuid, ctime, node, status}, pve_node}), or None
    when Proxmox is not asked (then the uuid given is the identity). ``vm_nodes`` are other Proxmox nodes
    the caller accepts the VM on (a migration's source or target).
    """
    vmid = validate.vmid(vmid)
    given = validate.vm_uuid(uuid) if uuid else ""
    ctime = None if ctime in (None, "") else int(ctime)
    if pve is None:
        if not given:
            raise InputError(
                "With ironclaw_pve=false the VM's identity comes from variables: give the uuid of VM "
                f"{vmid} (ironclaw_vm_uuid, the uuid of its smbios1 setting)."
            )
        return {
            "vmid": vmid,
            "uuid": given,
            "ctime": ctime,
            "node": node_name,
            "source": "variables",
            "status": "unknown",
        }
    vm, asked_on = pve["vm"], pve["pve_node"]
    nodes = [asked_on, *vm_nodes]
    unchanged = " Nothing was changed."
    if not vm.get("exists"):
        raise ProxmoxError(
            f"VM {vmid} does not exist in the Proxmox cluster (asked on node {asked_on}, inventory host "
            f"{node_name}): check the VMID." + unchanged
        )
    if vm["node"] not in nodes:
        raise ProxmoxError(
            f"VM {vmid} is on node {vm['node']}, not on node {' or '.join(nodes)} (inventory host {node_name}): "
            "run against the node that holds it." + unchanged
        )
    found = (vm.get("uuid") or "").lower()
    if given and given != found:
        raise ProxmoxError(
            f"VM {vmid} on node {vm['node']} has uuid {vm.get('uuid')} in Proxmox, not {uuid} as given: VMIDs are "
            "reused, so this may be another VM than you mean. Check the VM, then drop the uuid (Proxmox's is used) "
            "or give the right one." + unchanged
        )
    if ctime is not None and ctime != vm.get("ctime"):
        raise ProxmoxError(
            f"VM {vmid} on node {vm['node']} was created at {vm.get('ctime')} according to Proxmox, not at {ctime} "
            "as given: it was re-created under the same VMID." + unchanged
        )
    return {
        "vmid": vmid,
        "uuid": validate.vm_uuid(found),
        "ctime": vm.get("ctime"),
        "node": vm["node"],
        "source": "proxmox",
        "status": vm.get("status"),
    }


def secret_request(secrets, is_file) -> list[dict]:
    """The secrets asked for, checked: a non-empty list of {name, src} or {name, content}, every src a file
    (``is_file(path)`` on the controller, after ~ expansion by the caller)."""
    if not isinstance(secrets, list) or not secrets or not all(isinstance(item, dict) for item in secrets):
        raise InputError(SECRETS_SHAPE)
    if any(item.get("name") is None or None not in (item.get("src"), item.get("content")) for item in secrets):
        raise InputError(SECRETS_SHAPE)
    missing = [item["src"] for item in secrets if item.get("src") is not None and not is_file(item["src"])]
    if missing:
        raise InputError(f"Secret file(s) not found on the controller: {', '.join(missing)}.")
    return secrets


def record_here(placement, node_name: str, *, only_if_here: bool) -> bool:
    """May the next version record the VM on ``node_name``? ``placement`` is where the VM's verified ledger
    places it (a NodeView, None without a chain). A re-approval after an epoch bump (``only_if_here``)
    records nothing for a VM placed on another node: it is being moved away, its migration records it there."""
    return not only_if_here or placement is None or placement.name == node_name


def placed_here(ledger, vmid, node_name: str) -> None:
    """Refuse unless the VM's verified ledger (a VmLedger) places it, active, on ``node_name``: what a restore from
    backup may verify there. The store's own summary is never read for this."""
    vmid = validate.vmid(vmid)
    unchanged = " Nothing was changed."
    newest = ledger.newest
    if newest is None:
        raise PlacementError(
            f"The store has no manifest for VM {vmid} ({ledger.vm_uuid}): provision it first." + unchanged
        )
    if newest.destroyed:
        raise DecommissionedError(f"VM {vmid} ({ledger.vm_uuid}) was decommissioned." + unchanged)
    if newest.node.name != node_name:
        raise PlacementError(
            f"The store records VM {vmid} on {newest.node.name}, not on {node_name}: migrate it here with the migrate "
            "playbook (or set restore_verify_source)." + unchanged
        )
