# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Option sets shared by the node-side modules (documented in doc_fragments/node.py)."""

from __future__ import annotations

import contextlib
import os

from ansible.module_utils.basic import env_fallback

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import IronclawError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.lock import DEFAULT_TIMEOUT, locked
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto import lib as crypto_lib

DEFAULT_STATE_DIR = "/var/lib/ironclaw"


def node_options(vm: bool = True) -> dict:
    """Argument spec of the node options; `vm` adds vmid and vm_uuid."""
    spec = {
        "state_dir": {"type": "path", "default": DEFAULT_STATE_DIR},
        "tcti": {"type": "str", "fallback": (env_fallback, ["IRONCLAW_TCTI"])},
        "backend": {"type": "str", "default": "tpm2", "choices": ["tpm2", "software"]},
        "lock_timeout": {"type": "float", "default": DEFAULT_TIMEOUT},
    }
    if vm:
        spec["vmid"] = {"type": "int", "required": True}
        spec["vm_uuid"] = {"type": "str", "required": True}
    return spec


@contextlib.contextmanager
def failing_on_errors(module):
    """The one place where collection errors become fail_json (messages never hold secret bytes)."""
    if crypto_lib.missing():
        module.fail_json(msg=crypto_lib.missing())
    try:
        yield
    except IronclawError as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__)


@contextlib.contextmanager
def vm_locks(params, check_mode: bool = False):
    """Shared node lock (an epoch bump takes it exclusively) + exclusive lock on the VM.

    A check-mode run on a node with no state directory yet has nothing to race
    on, and must not create one.
    """
    if check_mode and not os.path.isdir(params["state_dir"]):
        yield
        return
    with locked(params["state_dir"], "node", params["lock_timeout"], shared=True):
        with locked(params["state_dir"], f"vm-{params['vmid']}", params["lock_timeout"]):
            yield
