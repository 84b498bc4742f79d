# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The store host's half of an action: in process when the store host is the controller itself.

The store usually lives on the controller (``ironclaw_store_host: localhost``). There, running the store's module
would start a Python process, unpack the module and import the collection again for a few file reads and writes
that the action's own process can do with the same code. So an action's store call runs the module's state
function here when the host it is delegated to is reached with the ``local`` connection and without become (the
same user, the same machine, the same files); anywhere else it runs the module on that host as before. The
arguments go through the module's own argument spec first, so both paths see the same validated options.
"""

from __future__ import annotations

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible import lock_states, manifest_states
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, IronclawError
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.module_backends import store

# The store-host states that may run in process: module -> state -> (its ArgumentSpec builder, state function).
IN_PROCESS = {
    "ironclaw.sealed.ironclaw_manifest": {
        "listed": (manifest_states.argument_spec, store.listed),
        "stored": (manifest_states.argument_spec, store.stored),
    },
    "ironclaw.sealed.ironclaw_lock": {
        "acquired": (lock_states.argument_spec, lock_states.lock_state),
        "released": (lock_states.argument_spec, lock_states.lock_state),
    },
}
DEFAULT_STATES = {"ironclaw.sealed.ironclaw_lock": "acquired"}


class StoreCallFailed(IronclawError):
    """The store host's module failed; its message and error type are the call's."""

    def __init__(self, msg: str, error: str | None):
        super().__init__(msg)
        self.error = error


def is_local(action) -> bool:
    """True when the action's (possibly delegated) host is this machine, reached as this user."""
    connection = getattr(action, "_connection", None)
    return getattr(connection, "transport", None) == "local" and not action._play_context.become


def validated(spec, args: dict) -> dict:
    """`args` checked and completed (defaults, fallbacks) by the module's ArgumentSpec, as the module would."""
    checked = ArgumentSpecValidator(
        spec.argument_spec,
        mutually_exclusive=spec.mutually_exclusive,
        required_together=spec.required_together,
        required_one_of=spec.required_one_of,
        required_if=spec.required_if,
        required_by=spec.required_by,
    ).validate(args)
    if checked.error_messages:
        raise InputError("; ".join(checked.error_messages))
    return checked.validated_parameters


def call(action, module_name: str, args: dict, task_vars: dict, check_mode: bool = False) -> dict:
    """Run `module_name` with `args` for the action's host: in process when it is this machine (see above), else as
    a module there. A failure raises (the module's message and error type), so the caller's one error path
    reports it."""
    state = args.get("state", DEFAULT_STATES.get(module_name))
    here = IN_PROCESS.get(module_name, {}).get(state)
    if here is not None and is_local(action):
        spec, function = here
        return function(validated(spec(), args), check_mode)
    out = action._execute_module(module_name=module_name, module_args=args, task_vars=task_vars)
    if out.get("failed"):
        raise StoreCallFailed(out.get("msg", f"{module_name} failed on the store host"), out.get("error"))
    out.pop("invocation", None)
    return out
