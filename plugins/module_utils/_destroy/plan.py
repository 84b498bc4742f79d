# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which VM a decommission destroys: the rule once written as a Jinja assert in the destroy role's plan."""

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
