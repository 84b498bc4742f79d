# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_manifest's option set and the dispatch of its node and store states (module_utils/_manifest/
module_backends/); the controller states run in the action plugin."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.argspec import (
    ArgumentSpec,
    manifest_lifetime_spec,
    spanning_spec,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.module_backends.node import (
    built,
    pinned,
    verified,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.module_backends.store import listed, stored

STATES = ("trusted", "built", "signed", "requests", "stored", "listed", "verified", "enrolled", "pinned")
CONTROLLER_STATES = ("trusted", "signed", "requests", "enrolled")

# What each state needs, checked before it runs (the node and store states' own checks stay for callers in
# process: ironclaw_provision's node steps).
REQUIRED_IF = [
    ("state", "built", ("vmid", "vm_uuid", "node_name")),
    ("state", "stored", ("store_dir",)),
    ("state", "listed", ("store_dir",)),
    ("state", "verified", ("vmid", "vm_uuid")),
    ("state", "pinned", ("trust_roots",)),
    ("state", "requests", ("sign_dir",)),
    ("state", "enrolled", ("node_name", "node_facts", "store_dir")),
]


def argument_spec() -> ArgumentSpec:
    """ironclaw_manifest's options (the module and its action plugin)."""
    return (
        spanning_spec()
        .merge(manifest_lifetime_spec())
        .merge(ArgumentSpec(required_if=REQUIRED_IF))
        .update_argspec(
            state={
                "type": "str",
                "required": True,
                "choices": [
                    "trusted",
                    "built",
                    "signed",
                    "requests",
                    "stored",
                    "listed",
                    "verified",
                    "enrolled",
                    "pinned",
                ],
            },
            cluster={"type": "str", "default": "default"},
            vm_ctime={"type": "int"},
            node_name={"type": "str"},
            keys={"type": "int", "default": 1, "no_log": False},
            threshold={"type": "int", "default": 1},
            rotate={"type": "bool", "default": False},
            create={"type": "bool", "default": True},
            root_expires_days={"type": "int", "default": 365},
            statement={"type": "dict"},
            chain={"type": "list", "elements": "dict"},
            policy={"type": "raw"},
            provision={"type": "bool", "default": False},
            vm_uuids={"type": "list", "elements": "str"},
            allow_pending={"type": "bool", "default": False},
            confirm={"type": "list", "elements": "str"},
            answer={"type": "str"},
            shown={"type": "list", "elements": "str"},
            envelope={"type": "dict"},
            receipt={"type": "dict"},
            trust_roots={"type": "list", "elements": "dict"},
            floor={"type": "dict"},
            unseal={"type": "bool", "default": True},
            cache={"type": "bool", "default": True},
            warn_days={"type": "int", "default": 14},
            now={"type": "str"},
            migration={"type": "dict"},
            node_record={"type": "dict"},
            node_facts={"type": "dict"},
            attestation={"type": "dict"},
            replace={"type": "bool", "default": False},
            head={"type": "dict"},
        )
    )


# ironclaw_migration's action plugin reads the defaults from here.


def run_state(module) -> dict:
    p = module.params
    state = p["state"]
    if state in CONTROLLER_STATES:
        raise InputError(
            f"state={state} runs on the controller through the collection's action plugin; "
            "call the module by its full name ironclaw.sealed.ironclaw_manifest"
        )
    if state == "verified":
        return verified(p, module.check_mode, module.warn)
    return {"built": built, "stored": stored, "listed": listed, "pinned": pinned}[state](p, module.check_mode)
