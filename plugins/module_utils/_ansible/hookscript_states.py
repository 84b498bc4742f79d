# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_hookscript's option set and its node side (the action plugin builds the hookscript on the controller)."""

from __future__ import annotations

import hashlib
import os

from ansible.module_utils.basic import env_fallback

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.argspec import DEFAULT_STATE_DIR, ArgumentSpec
from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._hook import install
from ansible_collections.ironclaw.sealed.plugins.module_utils._hook.node_record import check_node_id, read_node_id
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import BACKENDS, open_backend

DEFAULT_CLUSTER = "default"


def argument_spec() -> ArgumentSpec:
    """ironclaw_hookscript's options (the module and its action plugin)."""
    return ArgumentSpec(
        {
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "state_dir": {"type": "path", "default": DEFAULT_STATE_DIR},
            "cluster": {"type": "str", "default": DEFAULT_CLUSTER},
            "snippets_dir": {"type": "path", "default": "/var/lib/vz/snippets"},
            "storage": {"type": "str", "default": "local"},
            "file": {"type": "str", "default": "ironclaw-prestart.pyz"},
            "vmid": {"type": "int"},
            "pve": {"type": "bool", "default": True},
            "node_name": {"type": "str"},
            # With backend (and no node_name) the module reads this node's id itself and records it.
            "backend": {"type": "str", "choices": list(BACKENDS)},
            "tcti": {"type": "str", "fallback": (env_fallback, ["IRONCLAW_TCTI"])},
            # Not secret: no_log keeps the (large) hookscript out of logs and results.
            "content": {"type": "str", "no_log": True},
        }
    )


def _recorded_node_id(state_dir: str) -> str | None:
    try:
        return read_node_id(state_dir)
    except FormatError:
        return "(unreadable)"


def this_node_id(p: dict) -> str | None:
    """The node id to record in hook/node.json: node_name as given, or read from the node's backend, or None."""
    if p["node_name"] is not None and p["backend"] is not None:
        raise InputError("give node_name or backend, not both: with backend the module reads this node's id itself")
    if p["node_name"] is not None:
        return check_node_id(p["node_name"], "node_name")
    if p["backend"] is None or p["state"] != "present":
        return None
    with open_backend(p["backend"], tcti=p["tcti"], state_dir=p["state_dir"]) as backend:
        return backend.identity()[0].hex()


def hookscript_state(p: dict, check_mode: bool, cli) -> dict:
    """Install (present) or remove (absent) the hookscript; `cli` is None when Proxmox is not to be asked."""
    volid = install.volid_of(p["storage"], p["file"])
    path = os.path.join(p["snippets_dir"], p["file"])
    vmid = None if p["vmid"] is None else validate.vmid(p["vmid"])
    if vmid is not None and cli is None:
        raise InputError("vmid needs pve=true: the hookscript is attached to a VM with qm on a Proxmox VE node")
    node_id = this_node_id(p)
    before = {"snippet_sha256": install.snippet_digest(path), "node_id": _recorded_node_id(p["state_dir"])}
    if vmid is not None:
        before["hookscript"] = cli.config(vmid).get("hookscript")
    after = dict(before)
    attached = None
    if p["state"] == "present":
        if not p["content"]:
            raise InputError(
                "content is set by the action plugin, which builds the hookscript on the controller; "
                "call the module by its full name ironclaw.sealed.ironclaw_hookscript"
            )
        content = canonical.b64decode(p["content"], "content")
        changed = install.ensure_snippet(path, content, check_mode)
        after["snippet_sha256"] = hashlib.sha256(content).hexdigest()
        if node_id is not None:
            changed |= install.ensure_node_record(p["state_dir"], node_id, check_mode)
            after["node_id"] = node_id
        if vmid is not None:
            changed |= install.attach(cli, vmid, volid, check_mode)
            after["hookscript"] = volid
            attached = True
    elif vmid is not None:
        changed = install.detach(cli, vmid, volid, check_mode)
        after["hookscript"] = None if before["hookscript"] == volid else before["hookscript"]
        attached = False
    else:
        users = install.users_on_node(cli, volid) if cli is not None else []
        if users:
            raise InputError(
                f"VM(s) {', '.join(map(str, users))} on this node still use {volid}, which would then not start: "
                "nothing was removed; detach it from them first (state=absent with vmid)"
            )
        changed = install.remove_snippet(path, check_mode)
        changed |= install.remove_node_record(p["state_dir"], check_mode)
        after.update(snippet_sha256=None, node_id=None)
    return {
        "changed": changed,
        "path": path,
        "volid": volid,
        "attached": attached,
        "diff": {"before": before, "after": after},
    }
