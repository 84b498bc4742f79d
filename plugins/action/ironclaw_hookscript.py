# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_hookscript: the hookscript is built here on the controller and handed to the module on the node."""

from __future__ import annotations

import base64

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.hookscript_states import argument_spec
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import IronclawError
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.action_module import IronclawAction, ModuleFailed
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.hookscript import build_hookscript


class ActionModule(IronclawAction):
    argument_spec = staticmethod(argument_spec)

    def run_action(self, args: dict) -> dict:
        module_args = dict(self._task.args)
        if module_args.get("content") is not None:
            raise ModuleFailed(
                {"failed": True, "msg": "content is set by the action plugin (it builds the hookscript); leave it out"}
            )
        if args["state"] == "present":
            # The node's state_dir as given (not expanded here: the hook runs on the node), absolute.
            settings = {"state_dir": module_args.get("state_dir", args["state_dir"]), "cluster": args["cluster"]}
            try:
                module_args["content"] = base64.b64encode(build_hookscript(settings)).decode("ascii")
            except (IronclawError, ValueError, OSError) as exc:
                raise ModuleFailed(
                    {"failed": True, "msg": f"building the hookscript failed: {exc}", "error": type(exc).__name__}
                ) from exc
        return self._execute_module(module_args=module_args, task_vars=self._vars)
