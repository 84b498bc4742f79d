# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Proxmox adapter of a module: qm and pvesh found on the node, run through AnsibleModule.run_command."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, ProxmoxError
from ansible_collections.ironclaw.sealed.plugins.module_utils._pve.cli import ProxmoxCli


def proxmox_cli(module) -> ProxmoxCli:
    # get_bin_path also looks in /sbin, /usr/sbin and /usr/local/sbin, where qm lives.
    found = {name: module.get_bin_path(name) for name in ("qm", "pvesh")}
    missing = [name for name, path in found.items() if not path]
    if missing:
        raise ProxmoxError(
            f"{' and '.join(missing)} not found on this host: it is not a Proxmox VE node; "
            "for plain Linux hosts set pve: false (ironclaw_pve: false) and give the VM's uuid yourself"
        )

    def run(argv):
        # English, unformatted output whatever the node's locale.
        return module.run_command(argv, environ_update={"LC_ALL": "C"})

    return ProxmoxCli(run, qm=found["qm"], pvesh=found["pvesh"])


def stop_running(cli, vmid: int, *, stop: bool, timeout: int, check_mode: bool, refusal: str) -> str:
    """A VM of this node running: refuse with `refusal` unless `stop`; then shut it down (then stop it)."""
    if not stop:
        raise InputError(refusal)
    if check_mode:
        return "would shut down (then stop)"
    return cli.shutdown(vmid, timeout)


def stopped_for_migration(cli, vmid: int, vm_uuid: str, *, stop: bool, timeout: int, check_mode: bool) -> str:
    """Before a VM's sealed state leaves this node: it must be this VM, and not running anywhere."""
    info = cli.vm_info(vmid)
    if not info.exists:
        raise ProxmoxError(f"VM {vmid} does not exist in the Proxmox cluster: nothing was exported")
    if (info.uuid or "").lower() != vm_uuid:
        raise InputError(
            f"VMID {vmid} is now another VM (uuid {info.uuid}, not {vm_uuid}): nothing was exported; check the VMID"
        )
    if info.status != "running":
        return "stopped"
    if info.node != cli.node:
        raise InputError(f"VM {vmid} is running on node {info.node}: nothing was exported; stop it first")
    return stop_running(
        cli,
        vmid,
        stop=stop,
        timeout=timeout,
        check_mode=check_mode,
        refusal=f"VM {vmid} is running on node {cli.node}: nothing was changed on either node. Stop it first, "
        "or let the migration shut it down (then stop it) with ironclaw_stop_vm=true",
    )
