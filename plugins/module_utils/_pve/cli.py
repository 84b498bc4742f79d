# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Proxmox adapter: what the collection asks of Proxmox VE, through ``qm`` and ``pvesh`` on a node, as root.

Commands are argument lists run by an injected ``run(argv) -> (rc, stdout,
stderr)`` (``AnsibleModule.run_command`` on a node, recorded outputs in unit
tests); never a shell. Reading: where a VM is, its identity (smbios1 uuid),
creation time (meta ctime) and status. Changing: start, shutdown (then stop
when the guest does not power off in time), stop, migrate, hookscript.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import ProxmoxError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.validate import vmid as check_vmid
from ansible_collections.ironclaw.sealed.plugins.module_utils._pve.config import (
    parse_api_config,
    parse_meta,
    parse_qm_config,
    parse_smbios1,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._pve.resources import (
    find_guest,
    parse_cluster_resources,
)

DEFAULT_SHUTDOWN_TIMEOUT = 60
_STATUS = re.compile(r"status: ([a-z-]+)\n?")
_NO_CONFIG = re.compile(r"Configuration file 'nodes/([^/']+)/qemu-server/([0-9]+)\.conf' does not exist")
_VOLID = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*:snippets/[^/\s]+")
_NODE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?")


@dataclasses.dataclass(frozen=True)
class VmInfo:
    vmid: int
    exists: bool
    node: str | None = None
    uuid: str | None = None
    ctime: int | None = None
    status: str | None = None

    def to_result(self) -> dict:
        return dataclasses.asdict(self)


def local_node_name() -> str:
    """This node's Proxmox name: the hostname up to the first dot (PVE::INotify::nodename)."""
    return platform.node().split(".", 1)[0]


class ProxmoxCli:
    def __init__(self, run, *, qm: str = "qm", pvesh: str = "pvesh", node: str | None = None):
        self._run = run
        self.qm = qm
        self.pvesh = pvesh
        self.node = node or local_node_name()

    # -- running commands ----------------------------------------------------
    def _call(self, argv: list, vmid: int | None = None) -> str:
        rc, out, err = self._run([str(arg) for arg in argv])
        if rc == 0:
            return out
        message = (err or "").strip() or (out or "").strip() or "no output"
        shown = " ".join(str(arg) for arg in argv[1:])
        missing = _NO_CONFIG.search(message)
        if vmid is not None and missing:
            raise ProxmoxError(
                f"VM {vmid} is not on node {missing[1]}: '{shown}' failed with {message!r}; "
                "check the VMID and which node holds it (pvesh get /cluster/resources --type vm)"
            )
        raise ProxmoxError(f"'{shown}' failed on node {self.node} (exit {rc}): {message}")

    # -- reading ---------------------------------------------------------------
    def guests(self) -> list:
        out = self._call([self.pvesh, "get", "/cluster/resources", "--type", "vm", "--output-format", "json"])
        return parse_cluster_resources(out)

    def locate(self, vmid: int):
        """The cluster's entry for this VMID (a QEMU VM), or None when no guest has it."""
        guest = find_guest(self.guests(), check_vmid(vmid))
        if guest is not None and guest.type != "qemu":
            raise ProxmoxError(f"VMID {vmid} is a {guest.type} container on node {guest.node}, not a QEMU VM")
        return guest

    def config(self, vmid: int, node: str | None = None) -> dict:
        """The VM's current config (pending changes not applied): ``qm config`` here, the API for another node."""
        vmid = check_vmid(vmid)
        if node is None or node == self.node:
            return parse_qm_config(self._call([self.qm, "config", vmid, "--current"], vmid), vmid)
        if not _NODE.fullmatch(node):
            raise ProxmoxError(f"node name {node!r} is not a valid Proxmox node name")
        path = f"/nodes/{node}/qemu/{vmid}/config"
        out = self._call([self.pvesh, "get", path, "--current", "1", "--output-format", "json"], vmid)
        try:
            data = json.loads(out)
        except ValueError as exc:
            raise ProxmoxError(f"pvesh get {path} did not print JSON ({exc}): {out[:120]!r}") from None
        return parse_api_config(data, vmid)

    def status(self, vmid: int) -> str:
        """``running`` or ``stopped`` (or another QEMU state) of a VM on this node."""
        vmid = check_vmid(vmid)
        out = self._call([self.qm, "status", vmid], vmid)
        match = _STATUS.fullmatch(out)
        if not match:
            raise ProxmoxError(f"qm status {vmid} printed {out[:80]!r}, expected 'status: <state>'")
        return match[1]

    def vm_info(self, vmid: int) -> VmInfo:
        """Whether the VM exists, where, its identity, creation time and status.

        A VM without an smbios1 uuid is an error rather than a fact: every VM
        Proxmox creates has one, and the collection binds secrets to it.
        """
        vmid = check_vmid(vmid)
        guest = self.locate(vmid)
        if guest is None:
            return VmInfo(vmid=vmid, exists=False)
        options = self.config(vmid, guest.node)
        smbios1 = parse_smbios1(options["smbios1"]) if "smbios1" in options else None
        if smbios1 is None or smbios1.uuid is None:
            raise ProxmoxError(
                f"VM {vmid} on node {guest.node} has no smbios1 uuid in its config, so it has no identity to bind "
                f"secrets to; give it one: qm set {vmid} --smbios1 uuid=$(cat /proc/sys/kernel/random/uuid)"
            )
        meta = parse_meta(options["meta"]) if "meta" in options else None
        status = self.status(vmid) if guest.node == self.node else guest.status
        return VmInfo(
            vmid=vmid,
            exists=True,
            node=guest.node,
            uuid=smbios1.uuid,
            ctime=meta.ctime if meta else None,
            status=status,
        )

    def require_vm(self, vmid: int) -> VmInfo:
        info = self.vm_info(vmid)
        if not info.exists:
            raise ProxmoxError(
                f"VM {vmid} does not exist in this cluster (pvesh get /cluster/resources lists no guest {vmid}); "
                "check the VMID"
            )
        return info

    # -- changing (this node's VMs) ------------------------------------------------
    def start(self, vmid: int) -> bool:
        """Start the VM; False when it already runs. A refusing pre-start hookscript fails with its message."""
        vmid = check_vmid(vmid)
        if self.status(vmid) == "running":
            return False
        self._call([self.qm, "start", vmid], vmid)
        return True

    def stop(self, vmid: int) -> bool:
        """Hard stop (QEMU is ended); False when it was not running."""
        vmid = check_vmid(vmid)
        if self.status(vmid) == "stopped":
            return False
        self._call([self.qm, "stop", vmid], vmid)
        return True

    def shutdown(self, vmid: int, timeout: int = DEFAULT_SHUTDOWN_TIMEOUT) -> str:
        """Ask the guest to power off; stop it if it still runs after `timeout` seconds.

        Returns ``already stopped``, ``shut down`` or ``stopped`` (the guest did
        not power off in time, or the shutdown failed, and it was stopped).
        """
        vmid = check_vmid(vmid)
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
            raise ProxmoxError(f"shutdown timeout must be a whole number of seconds (0 or more), got {timeout!r}")
        if self.status(vmid) == "stopped":
            return "already stopped"
        try:
            self._call([self.qm, "shutdown", vmid, "--timeout", timeout], vmid)
            return "shut down"
        except ProxmoxError as shutdown_error:
            if self.status(vmid) == "stopped":
                return "shut down"
            try:
                self._call([self.qm, "stop", vmid], vmid)
            except ProxmoxError as stop_error:
                raise ProxmoxError(f"{shutdown_error}; then {stop_error}") from None
            return "stopped"

    def destroy(self, vmid: int) -> bool:
        """``qm destroy`` this node's stopped VM (its config and disks); False when it does not exist here."""
        vmid = check_vmid(vmid)
        info = self.vm_info(vmid)
        if not info.exists or info.node != self.node:
            return False
        self._call([self.qm, "destroy", vmid], vmid)
        return True

    def migrate(self, vmid: int, target: str, online: bool = False) -> str:
        """``qm migrate`` this node's VM to `target`; returns the task log. Without `online` the VM must be stopped."""
        vmid = check_vmid(vmid)
        if not isinstance(target, str) or not _NODE.fullmatch(target):
            raise ProxmoxError(f"migration target {target!r} is not a valid Proxmox node name")
        if target == self.node:
            raise ProxmoxError(f"VM {vmid} cannot migrate to {target}: that is the node it is on")
        argv = [self.qm, "migrate", vmid, target] + (["--online"] if online else [])
        return self._call(argv, vmid)

    def set_hookscript(self, vmid: int, volid: str | None) -> bool:
        """Set (or with None, remove) the VM's hookscript, e.g. ``local:snippets/ironclaw-hook``; False if unchanged."""
        vmid = check_vmid(vmid)
        if volid is not None and not _VOLID.fullmatch(volid):
            raise ProxmoxError(f"hookscript {volid!r} must be a snippets volume such as local:snippets/<file>")
        current = self.config(vmid).get("hookscript")
        if current == volid:
            return False
        if volid is None:
            self._call([self.qm, "set", vmid, "--delete", "hookscript"], vmid)
        else:
            self._call([self.qm, "set", vmid, "--hookscript", volid], vmid)
        return True
