# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_provision: the argument spec (the action plugin and the module share it) and the node-side steps.

``sealed`` seals the secrets, test-unseals them all and describes the result in one module run;
``cached`` verifies the stored manifest on the node and caches it. The other steps run on the controller
(plugins/action/ironclaw_provision.py) and talk to the node or store host through other modules.
"""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible import manifest_states
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.options import node_options, vm_locks
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, VerificationError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.approval import approval_from_dict
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.spec import parse_policy
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir

STEPS = ("identified", "placed", "planned", "sealed", "recorded", "cached")
NODE_STEPS = ("sealed", "cached")

SECRET_OPTIONS = {
    "name": {"type": "str", "required": True},
    "src": {"type": "path"},
    "content": {"type": "str", "no_log": True},
    "content_base64": {"type": "str", "no_log": True},
}


def spec() -> dict:
    out = node_options(vm=False)
    out.update(
        step={"type": "str", "required": True, "choices": list(STEPS)},
        vmid={"type": "raw"},
        vm_uuid={"type": "str", "default": ""},
        vm_ctime={"type": "int"},
        pve={"type": "bool", "default": False},
        vm_nodes={"type": "list", "elements": "str", "default": []},
        node_name={"type": "str"},
        # The list itself is not secret (names, paths); its content fields are no_log.
        secrets={"type": "list", "elements": "dict", "options": SECRET_OPTIONS, "no_log": False},
        policy={"type": "raw"},
        policy_key={"type": "str", "no_log": False},  # a public key
        approval={"type": "dict"},
        identity={"type": "dict"},
        node={"type": "dict"},
        statement={"type": "dict"},
        provision={"type": "bool", "default": False},
        only_if_here={"type": "bool", "default": False},
        controller_dir={"type": "path", "default": "~/.local/share/ironclaw"},
        store_dir={"type": "path"},
        signing={"type": "str", "default": "online", "choices": ["online", "offline"]},
        sign_dir={"type": "path"},
        expires_days={"type": "int", "default": 90},
        max_days={"type": "int", "default": 90},
        resign_days={"type": "int", "default": 30},
        warn_days={"type": "int", "default": 14},
        cluster={"type": "str", "default": "default"},
        record={"type": "dict"},
        now={"type": "str"},
    )
    return out


def _vm(p: dict) -> VmDir:
    identity = p["identity"] or {}
    if not identity.get("uuid"):
        raise InputError(f"step={p['step']} needs identity: the identity result of step=identified")
    return VmDir(p["state_dir"], identity["vmid"], identity["uuid"])


def _node_params(p: dict, vm: VmDir, state: str) -> dict:
    """The parameters the manifest states read, for this VM."""
    identity = p["identity"]
    return {
        **p,
        "state": state,
        "vmid": vm.vmid,
        "vm_uuid": vm.vm_uuid,
        "vm_ctime": identity.get("ctime"),
        "migration": None,
    }


def sealed(p: dict, check_mode: bool) -> dict:
    """Seal every secret (the keyslot created on first use), test-unseal them all, describe the sealed state."""
    vm = _vm(p)
    if not p["secrets"]:
        raise InputError("step=sealed needs secrets: a list of {name, content | content_base64}")
    policy = parse_policy(p["policy"])
    secrets = engine.load_secrets(p["secrets"])
    approval = approval_from_dict(p["approval"], "approval") if p["approval"] is not None else None
    key = canonical.b64decode(p["policy_key"], "policy_key") if p["policy_key"] else None
    params = _node_params(p, vm, "sealed")
    with (
        open_backend(p["backend"], tcti=p["tcti"], state_dir=p["state_dir"]) as backend,
        vm_locks(params, check_mode),
    ):
        if key is None and vm.keyslot(required=False) is None and check_mode:
            return {
                "changed": True,
                "keyslot": {"action": "created"},
                "blobs": [{"name": s.name, "action": "created"} for s in secrets],
                "verified": [],
                "statement": None,
            }
        out = engine.seal(
            backend,
            vm,
            secrets,
            migratable=policy.migratable,
            pcrs=policy.pcrs,
            policy_key_public=key,
            approval=approval,
            check_mode=check_mode,
        )
        if check_mode and out["keyslot"]["action"] == "created":
            return {**out, "verified": [], "statement": None}
        checked = engine.verify(backend, vm, approval)
    if checked["failed"]:
        details = "; ".join(b["error"] for b in checked["blobs"] if not b["ok"])
        raise VerificationError(f"VM {vm.vmid}: {len(checked['failed'])} blob(s) did not verify: {details}")
    if not checked["blobs"]:
        raise InputError(f"VM {vm.vmid} has a keyslot but no sealed secrets to verify")
    out["verified"] = [b["name"] for b in checked["blobs"]]
    # Nothing to describe in check mode: the sealed state it would describe is not there yet.
    out["statement"] = None if check_mode else manifest_states.built(params, True)["statement"]
    return out


def cached(p: dict, check_mode: bool, module) -> dict:
    """Verify the stored manifest on the node (every rule, no unseal) and cache it with the store's head."""
    vm = _vm(p)
    record = p["record"] or {}
    if not record.get("envelope"):
        raise InputError("step=cached needs record: the record result of step=recorded")
    params = {
        **_node_params(p, vm, "cached"),
        "envelope": record["envelope"],
        "trust_roots": record.get("trust_roots"),
        "floor": record.get("floor"),
        "head": record.get("head"),
        "unseal": False,
        "cache": True,
    }
    return manifest_states.verified(params, check_mode, module)


def run_step(module) -> dict:
    p = module.params
    if p["step"] not in NODE_STEPS:
        raise InputError(
            f"step={p['step']} runs on the controller through the collection's action plugin; "
            "call the module by its full name ironclaw.sealed.ironclaw_provision"
        )
    if p["step"] == "cached":
        return cached(p, module.check_mode, module)
    return sealed(p, module.check_mode)
