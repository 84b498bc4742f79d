# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_destroy's option set and its node state (the controller states live in the action plugin)."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.manifest_states import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.lock import locked
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.node import destroy_on_node
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend

CONTROLLER_STATES = ("revoked", "receipted")

SPEC = {
    "state": {"type": "str", "default": "absent", "choices": ["absent", "revoked", "receipted"]},
    "vmid": {"type": "int", "required": True},
    "vm_uuid": {"type": "str", "required": True},
    "state_dir": {"type": "path", "default": "/var/lib/ironclaw"},
    "tcti": {"type": "str"},
    "backend": {"type": "str", "default": "tpm2", "choices": ["tpm2", "software"]},
    "lock_timeout": {"type": "float", "default": 120},
    "controller_dir": {"type": "path", "default": "~/.local/share/ironclaw"},
    "cluster": {"type": "str", "default": "default"},
    "locations": {"type": "list", "elements": "dict"},
    "policy_key": {"type": "dict", "no_log": False},
    "tombstone": {"type": "dict"},
    "now": {"type": "str"},
}


def destroy_node(p: dict, check_mode: bool) -> dict:
    if p["state"] in CONTROLLER_STATES:
        raise InputError(
            f"state={p['state']} runs on the controller through the collection's action plugin; "
            "call the module by its full name ironclaw.sealed.ironclaw_destroy"
        )
    vmid, vm_uuid = validate.vmid(p["vmid"]), validate.vm_uuid(p["vm_uuid"])
    now = canonical.utc_timestamp(clock(p["now"]))
    with open_backend(p["backend"], tcti=p["tcti"], state_dir=p["state_dir"]) as backend:
        if check_mode:
            return destroy_on_node(backend, p["state_dir"], vmid, vm_uuid, now=now, check_mode=True)
        # Exclusive node lock: the epoch bump must not interleave with any seal or unseal on this node.
        with locked(p["state_dir"], "node", p["lock_timeout"]):
            with locked(p["state_dir"], f"vm-{vmid}", p["lock_timeout"]):
                return destroy_on_node(backend, p["state_dir"], vmid, vm_uuid, now=now, check_mode=False)
