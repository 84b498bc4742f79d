# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a decommission decides (once Jinja in the destroy role): which VM, which nodes and locks, what stops it
before anything is destroyed, what each node did, and what the run reports."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, PlacementError


def choose_vm(vmid, given_uuid: str | None, found: list[dict], store_dir: str) -> str:
    """The uuid of the VM to destroy among the VMs the store knows under `vmid` (`found`: the ``vms`` result of
    ironclaw_manifest state=listed with vmid). A reused VMID needs the uuid; a uuid given must be one of them."""
    vmid = validate.vmid(vmid)
    given = validate.vm_uuid(given_uuid) if given_uuid else None
    uuids = [validate.vm_uuid(vm.get("vm_uuid")) for vm in found or []]
    if not uuids:
        raise PlacementError(f"VM {vmid} is unknown to the store ({store_dir}): nothing was destroyed.")
    if given is not None:
        if given not in uuids:
            raise PlacementError(
                f"VM {vmid} has no uuid {given} in the store (it knows {', '.join(uuids)}): nothing was destroyed."
            )
        return given
    if len(uuids) > 1:
        raise InputError(
            f"VMID {vmid} was used by several VMs ({', '.join(uuids)}): name the one to destroy with "
            "-e ironclaw_vm_uuid=...; nothing was destroyed."
        )
    return uuids[0]


def history_nodes(ledger) -> list[str]:
    """The nodes of a VM's verified history (a VmLedger), in the order the chain first names them: every node that
    may still hold a copy, so every node the decommission destroys on."""
    nodes: list[str] = []
    for _envelope, manifest in ledger.chain:
        if manifest.node.name not in nodes:
            nodes.append(manifest.node.name)
    return nodes


def run_locks(vmid, nodes: list[str]) -> list[str]:
    """The store locks a decommission holds: the VM's, and each node's of its history (their epochs are bumped)."""
    return [f"vm-{validate.vmid(vmid)}"] + [f"node-{node}" for node in nodes]


def refusals(probes: dict) -> list[str]:
    """What stops a decommission before anything is destroyed: each reachable node whose check (the destroy in
    check mode) refused, with its message. `probes` maps each node of the history to its check's result, or None
    where it was not checked (not in the inventory). A result with a status answered; an unreachable node is only
    listed (in the receipt, and the run fails at its end), never a refusal."""
    refused = []
    for node, probe in probes.items():
        if not isinstance(probe, dict) or probe.get("unreachable") or "status" in probe:
            continue
        refused.append(f"{node}: {probe.get('msg') or 'the check failed without a message'}")
    return refused


def survivor_uuids(probes: dict) -> list[str]:
    """The other VMs sealed on the history's nodes (their checks list them): after the epoch bumps they need new
    approvals, decided from their chains."""
    found: list[str] = []
    for probe in probes.values():
        if not isinstance(probe, dict):
            continue
        for vm in probe.get("survivors") or []:
            uuid = validate.vm_uuid(vm.get("vm_uuid"))
            if uuid not in found:
                found.append(uuid)
    return found


def locations(nodes: list[str], results: dict) -> list[dict]:
    """One location per node of the history for the receipt: the node's status and evidence when its destroy
    answered, else ``unreachable`` (not reached, failed, or not in the inventory)."""
    out = []
    for node in nodes:
        result = results.get(node)
        reached = isinstance(result, dict) and "status" in result and not result.get("unreachable")
        out.append(
            {
                "node": node,
                "status": result["status"] if reached else "unreachable",
                "evidence": result.get("evidence") if reached else None,
            }
        )
    return out


def summary(vmid, vm_uuid: str, where: list[dict], key_status: str, tombstone_version, receipt_stored: bool) -> str:
    """One line on what the decommission did: each node, the policy key, the tombstone, the receipt."""
    parts = []
    for location in where:
        evidence = location.get("evidence")
        detail = ""
        if evidence:
            detail = (
                f" (epoch {evidence.get('epoch_before')} -> {evidence.get('epoch_after')}, "
                f"{len(evidence.get('files_removed') or [])} file(s))"
            )
        parts.append(f"{location['node']} {location['status']}{detail}")
    line = f"VM {vmid} ({vm_uuid}): {'; '.join(parts)}; policy key {key_status};"
    if tombstone_version is not None:
        line += f" tombstone v{tombstone_version};"
    return line + (" receipt stored" if receipt_stored else " no new receipt")


def unreachable_message(where: list[dict]) -> str | None:
    """Why the run must be re-run: the nodes whose copies are not revoked yet, or None."""
    gone = [location["node"] for location in where if location["status"] == "unreachable"]
    if not gone:
        return None
    return (
        f"{', '.join(gone)} could not be reached: the VM's copies there are not revoked yet. The receipt lists them "
        "as unreachable. Re-run ironclaw.sealed.decommission when they are up to finish and issue the final receipt."
    )
