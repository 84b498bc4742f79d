# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The base of the collection's action plugins (community.crypto's plugin_utils/_action_module.py): task arguments
validated with the module's ArgumentSpec, and refusals turned into failures in this one place."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import IronclawError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto import lib as crypto_lib


class ModuleFailed(Exception):
    """A module on the remote host failed, or the action refused before any ran: `result` is the task's."""

    def __init__(self, result: dict):
        super().__init__(result.get("msg"))
        self.result = result


class IronclawAction(ActionBase):
    """Subclasses set ``argument_spec`` (a function returning the module's ArgumentSpec) and either HANDLERS
    {state: fn(args, check_mode)}, the states run here on the controller (every other state runs the module on the
    target host with the task's arguments), or override ``run_action``.

    An action that validates its arguments itself (ironclaw_migration's ``run`` does today) leaves
    ``argument_spec`` None, overrides ``run_action(args)`` with its dispatch on ``step`` (args are then the
    task's arguments as given) and ``failure_message`` for the sentence it appends to a refusal.
    """

    TRANSFERS_FILES = False
    argument_spec = None
    STATE_OPTION = "state"
    HANDLERS: dict = {}

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        self._vars = task_vars or {}
        args = self.argument_spec().validate(self) if self.argument_spec is not None else dict(self._task.args)
        try:
            result.update(self.run_action(args))
        except ModuleFailed as failed:
            result.update(failed.result)
        except IronclawError as exc:
            result.update(
                failed=True,
                msg=self.failure_message(exc, args),
                error=getattr(exc, "error", None) or type(exc).__name__,
            )
        return result

    def run_action(self, args: dict) -> dict:
        handler = self.HANDLERS.get(args.get(self.STATE_OPTION))
        if handler is None:
            # A node or store state: the module on the target host.
            return self._execute_module(task_vars=self._vars)
        self.require_crypto()
        return handler(args, self._task.check_mode)

    def failure_message(self, exc: IronclawError, _args: dict) -> str:
        return str(exc)

    @staticmethod
    def require_crypto() -> None:
        """Controller-side signing and verification need cryptography here."""
        if crypto_lib.missing():
            raise ModuleFailed({"failed": True, "msg": crypto_lib.missing()})

    def run_module(self, name: str, module_args: dict) -> dict:
        """Run `name` on the task's host (or its delegate); a failure becomes the task's result."""
        out = self._execute_module(module_name=name, module_args=module_args, task_vars=self._vars)
        if out.get("failed"):
            raise ModuleFailed(out)
        return out
