# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_lock: the holder (this ansible-playbook run) is described here, on the controller; the module on the
store host takes or releases the locks (in process when the store host is the controller: plugin_utils/store_host)."""

from __future__ import annotations

import dataclasses
import getpass
import os
import socket

from ansible.plugins.action import ActionBase

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.lock_states import SPEC
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import IronclawError
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.lock import Holder
from ansible_collections.ironclaw.sealed.plugins.plugin_utils import store_host


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _valid, args = self.validate_argument_spec(argument_spec=SPEC)
        if args["holder"] is not None:
            result.update(failed=True, msg="holder is set by the action plugin (it names this run); leave it out")
            return result
        playbook = args["playbook"] or (task_vars or {}).get("ansible_play_name") or "ansible"
        # Tasks run in worker processes forked from ansible-playbook: the parent is the run, alive as long as it is.
        holder = Holder.of_process(os.getppid(), playbook, socket.gethostname(), getpass.getuser())
        module_args = dict(self._task.args, holder=dataclasses.asdict(holder))
        try:
            result.update(
                store_host.call(self, "ironclaw.sealed.ironclaw_lock", module_args, task_vars, self._task.check_mode)
            )
        except IronclawError as exc:
            result.update(failed=True, msg=str(exc), error=getattr(exc, "error", None) or type(exc).__name__)
        # Where the locks live, so that a later play releases them there (register the result).
        result["store_host"] = self._task.delegate_to or (task_vars or {}).get("inventory_hostname")
        return result
