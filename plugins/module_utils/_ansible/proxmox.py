# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Proxmox adapter of a module: qm and pvesh found on the node, run through AnsibleModule.run_command."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import ProxmoxError
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
