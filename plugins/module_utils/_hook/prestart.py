# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Proxmox VE pre-start hook: a VM with sealed secrets starts only if its sealed state verifies on this node.

Proxmox runs a VM's hookscript as ``<script> <vmid> <phase>``; a non-zero exit in
``pre-start`` blocks the start. Nothing announces a migration, an HA recovery, a
restore or a rollback of the VM's files, but each of them ends in a start, so
this is where the node checks, on its own, what it holds for the VM:

- the VM's identity (smbios1 uuid, meta ctime) from Proxmox;
- the newest signed manifest this node verified (its cache) against the trust
  roots it holds, its expiry, the floor (the node's floor record outside the VM
  directory), the subject, and every file's SHA-256 and size;
- that the manifest is about this node's keyslot and, when the installer
  recorded it, this node.

It does not unseal: no TPM command runs at VM start. It fails closed: missing
state, an unreadable file or any unexpected error refuses the start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    InputError,
    IronclawError,
    ProxmoxError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._hook.config import parse_config
from ansible_collections.ironclaw.sealed.plugins.module_utils._hook.node_record import read_node_id
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.cache import NodeCache
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.node_check import verify_on_node
from ansible_collections.ironclaw.sealed.plugins.module_utils._pve.cli import ProxmoxCli
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir

PRE_START = "pre-start"
COMMAND_TIMEOUT = 60
# Where Proxmox VE installs qm and pvesh; a hook's PATH may not include the sbin directories.
TOOL_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/bin")
_REMEDY = (
    "restore the VM's sealed state (restore_verify) or move it with the migrate playbook; detach the hookscript "
    "only if the VM no longer uses sealed secrets"
)


def check_start(state_dir: str, vmid: int, cluster: str, now: datetime, cli: ProxmoxCli) -> str:
    """A one-line success text, or a collection error saying why VM `vmid` must not start on this node."""
    vmid = validate.vmid(vmid)
    info = cli.vm_info(vmid)
    if not info.exists:
        raise ProxmoxError(f"VM {vmid} is not in this cluster's resources (pvesh get /cluster/resources)")
    vm = VmDir(state_dir, vmid, info.uuid)
    if not vm.exists():
        raise VerificationError(f"VM {vmid} has no sealed state on this node ({vm.path} does not exist); {_REMEDY}")
    keyslot = vm.keyslot(required=False)
    if keyslot is None:
        raise VerificationError(f"VM {vmid} has no keyslot on this node ({vm.keyslot_path} is missing); {_REMEDY}")
    cache = NodeCache(state_dir)
    if cache.manifest(vmid) is None:
        raise VerificationError(
            f"VM {vmid} has no cached manifest on this node ({cache.manifest_path(vmid)} is missing), so its sealed "
            "state cannot be checked; run the verify playbook for the VM, which caches its newest signed manifest"
        )
    manifest, _root, _envelope = verify_on_node(
        state_dir,
        vmid=vmid,
        vm_uuid=info.uuid,
        cluster=cluster,
        vm_ctime=info.ctime,
        envelope=None,
        offered_roots=[],
        floor=None,
        now=now,
    )
    recorded = f"manifest v{manifest.version} of VM {vmid} records node {manifest.node.name} ({manifest.node.id[:20]}…)"
    if keyslot.node_name.hex() != manifest.node.id:
        raise VerificationError(
            f"{recorded}, but the VM's keyslot is bound to node {keyslot.node_name.hex()[:20]}…: the keyslot and the "
            "manifest do not belong together"
        )
    this_node = read_node_id(state_dir)
    if this_node is not None and this_node != manifest.node.id:
        raise VerificationError(
            f"{recorded}, but this is node {this_node[:20]}… (hook/node.json): the VM's sealed state was copied "
            "from another node; move it with the migrate playbook"
        )
    return f"VM {vmid}: sealed state verified (manifest v{manifest.version})"


def find_tool(name: str) -> str:
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *TOOL_DIRS]))
    if path is None:
        raise ProxmoxError(f"{name} not found on this node (looked in PATH and {', '.join(TOOL_DIRS)})")
    return path


def run_command(argv: list) -> tuple[int, str, str]:
    """The adapter's runner: an argument list, never a shell; English output whatever the locale."""
    # Proxmox runs the hookscript, not Ansible: there is no AnsibleModule.run_command here.
    # pylint: disable-next=ansible-bad-function
    proc = subprocess.run(  # noqa: S603 - qm/pvesh with the adapter's argument list
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        env={**os.environ, "LC_ALL": "C"},
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def main(argv: list, read_config, *, run=None, now: datetime | None = None) -> int:
    """The hookscript: ``<vmid> <phase>``; `read_config()` gives the ``ironclaw-hook.json`` bytes.

    Exit 0 to let the VM start (and for every phase but pre-start), 1 to refuse, 2 for a bad command line.
    """
    if len(argv) != 2:
        sys.stderr.write(f"ironclaw: usage: <hookscript> <vmid> <phase>, found {len(argv)} argument(s)\n")
        return 2
    try:
        vmid = validate.vmid(argv[0])
    except InputError as exc:
        sys.stderr.write(f"ironclaw: {exc}\n")
        return 2
    if argv[1] != PRE_START:
        return 0
    try:
        config = parse_config(read_config())
        cli = ProxmoxCli(run or run_command, qm=config.qm or find_tool("qm"), pvesh=config.pvesh or find_tool("pvesh"))
        verdict = check_start(config.state_dir, vmid, config.cluster, now or datetime.now(UTC), cli)
    except IronclawError as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - fail closed: whatever went wrong, the VM does not start
        reason = f"unexpected error ({type(exc).__name__}: {exc})"
    else:
        sys.stdout.write(f"ironclaw: {verdict}\n")
        return 0
    sys.stderr.write(f"ironclaw: refusing to start VM {vmid}: {' '.join(reason.split())}\n")
    return 1
