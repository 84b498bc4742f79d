# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_lock: the holder (this ansible-playbook run) is described here, on the controller; the module on the
store host takes or releases the locks (in process when the store host is the controller: plugin_utils/store_host)."""

from __future__ import annotations

import dataclasses
import getpass
import os
import socket

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.lock_states import argument_spec
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.lock import Holder
from ansible_collections.ironclaw.sealed.plugins.plugin_utils import store_host
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.action_module import IronclawAction, ModuleFailed


class ActionModule(IronclawAction):
    argument_spec = staticmethod(argument_spec)

    def run_action(self, args: dict) -> dict:
        if args["holder"] is not None:
            raise ModuleFailed(
                {"failed": True, "msg": "holder is set by the action plugin (it names this run); leave it out"}
            )
        playbook = args["playbook"] or self._vars.get("ansible_play_name") or "ansible"
        # Tasks run in worker processes forked from ansible-playbook: the parent is the run, alive as long as it is.
        holder = Holder.of_process(os.getppid(), playbook, socket.gethostname(), getpass.getuser())
        module_args = dict(self._task.args, holder=dataclasses.asdict(holder))
        # On the store host; in process when that is the controller itself (plugin_utils/store_host).
        return store_host.call(self, "ironclaw.sealed.ironclaw_lock", module_args, self._vars, self._task.check_mode)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        # Where the locks live, so that a later play releases them there (register the result). Set on a failure
        # too: a release task's delegate_to names it, and Ansible templates delegate_to before its when.
        result["store_host"] = self._task.delegate_to or (task_vars or {}).get("inventory_hostname")
        return result
