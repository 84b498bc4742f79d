# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""An action plugin whose signing states run on the controller and whose other states run on the target."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import IronclawError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto import lib as crypto_lib


class SplitAction(ActionBase):
    """Subclasses set SPEC (the module's argument spec), DEFAULT_STATE and HANDLERS {state: fn(args, check_mode)}."""

    TRANSFERS_FILES = False
    SPEC: dict = {}
    DEFAULT_STATE: str | None = None
    HANDLERS: dict = {}

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        state = self._task.args.get("state", self.DEFAULT_STATE)
        if state not in self.HANDLERS:
            # Node and store states: the module on the target host.
            result.update(self._execute_module(task_vars=task_vars))
            return result
        _valid, args = self.validate_argument_spec(argument_spec=self.SPEC)
        if crypto_lib.missing():
            result.update(failed=True, msg=crypto_lib.missing())
            return result
        try:
            result.update(self.HANDLERS[state](args, self._task.check_mode))
        except IronclawError as exc:
            result.update(failed=True, msg=str(exc), error=type(exc).__name__)
        return result
