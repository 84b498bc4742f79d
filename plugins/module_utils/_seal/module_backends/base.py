# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A state of a node module: the backend opened and the VM's locks held around plan() and apply()."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ansible_collections.ironclaw.sealed.plugins.module_utils._format.approval import approval_from_dict
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir, vm_locks


class NodeState(ABC):
    """One state on one VM. `params` are the module's (validated), `proxmox` returns the node's Proxmox adapter
    when a state asks Proxmox. Subclasses implement plan_and_apply(); most do it through PlannedState."""

    def __init__(self, params: dict, check_mode: bool, proxmox=None):
        self.params = params
        self.check_mode = check_mode
        self.proxmox = proxmox
        self.vm = VmDir(params["state_dir"], params["vmid"], params["vm_uuid"])
        given = params.get("approval")
        self.approval = approval_from_dict(given, "approval") if given is not None else None
        self.backend = None

    def run(self, backend=None) -> dict:
        """Under the VM's locks, on `backend` when the caller holds one open for several VMs (one TPM context for
        a fleet), else on a backend opened for this VM."""
        p = self.params
        if backend is not None:
            self.backend = backend
            with vm_locks(p, self.check_mode):
                return self.plan_and_apply()
        with (
            open_backend(p["backend"], tcti=p["tcti"], state_dir=p["state_dir"]) as self.backend,
            vm_locks(p, self.check_mode),
        ):
            return self.plan_and_apply()

    @abstractmethod
    def plan_and_apply(self) -> dict:
        """Under the backend and the VM's locks: the state's result (in check mode, what it would do)."""


class PlannedState(NodeState):
    """A state with a pure plan() (what must change; check mode returns it) and apply(plan) (the change); a plan
    has .changed and .result()."""

    @abstractmethod
    def plan(self):
        """What must change, without changing anything."""

    @abstractmethod
    def apply(self, plan) -> dict:
        """Make the planned change and return the state's result."""

    def plan_and_apply(self) -> dict:
        plan = self.plan()
        if self.check_mode or not plan.changed:
            return plan.result()
        return self.apply(plan)
