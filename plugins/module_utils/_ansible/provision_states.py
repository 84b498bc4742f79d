# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_provision: the argument spec (the action plugin and the module share it) and the node-side steps.

``sealed`` seals the secrets, test-unseals them all and describes the result in one module run;
``cached`` verifies the stored manifest on the node and caches it. The other steps run on the controller
(plugins/action/ironclaw_provision.py) and talk to the node or store host through other modules.
"""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.argspec import (
    ArgumentSpec,
    controller_spec,
    manifest_lifetime_spec,
    node_spec,
    secrets_option,
    signing_spec,
    store_spec,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.module_backends.node import built, verified
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.sealed import Sealed
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.verified import failure
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir

STEPS = ("requested", "identified", "placed", "planned", "sealed", "recorded", "cached")
NODE_STEPS = ("sealed", "cached")


def argument_spec() -> ArgumentSpec:
    """ironclaw_provision's options (the module and its action plugin)."""
    return (
        node_spec()
        .merge(controller_spec())
        .merge(signing_spec())
        .merge(manifest_lifetime_spec())
        .merge(store_spec())
        .update_argspec(
            step={"type": "str", "required": True, "choices": list(STEPS)},
            vmid={"type": "raw"},
            vm_uuid={"type": "str", "default": ""},
            vm_ctime={"type": "int"},
            pve={"type": "bool", "default": False},
            vm_nodes={"type": "list", "elements": "str", "default": []},
            node_name={"type": "str"},
            secrets=secrets_option(),
            policy={"type": "raw"},
            policy_key={"type": "str", "no_log": False},  # a public key
            approval={"type": "dict"},
            identity={"type": "dict"},
            node={"type": "dict"},
            statement={"type": "dict"},
            provision={"type": "bool", "default": False},
            only_if_here={"type": "bool", "default": False},
            warn_days={"type": "int", "default": 14},
            cluster={"type": "str", "default": "default"},
            record={"type": "dict"},
            # A fleet: the VMs of the run (identified), then each step's RV(vms) (no secret in them).
            vms={"type": "raw"},
            now={"type": "str"},
        )
    )


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


class SealedAndVerified(Sealed):
    """ironclaw_seal's state=sealed, then every blob of the VM test-unsealed under the same locks."""

    def plan_and_apply(self) -> dict:
        out = super().plan_and_apply()
        if self.check_mode and out["keyslot"]["action"] == "created":
            return {**out, "verified": None}  # nothing to test-unseal yet
        checked = engine.verify(self.backend, self.vm, self.approval)
        refusal = failure(self.vm.vmid, checked["blobs"], checked["failed"])
        if refusal is not None:
            raise refusal
        return {**out, "verified": [b["name"] for b in checked["blobs"]]}


def sealed(p: dict, check_mode: bool, backend=None) -> dict:
    """Seal every secret (the keyslot created on first use), test-unseal them all, describe the sealed state.
    On `backend` when the caller holds one open for a fleet."""
    vm = _vm(p)
    if not p["secrets"]:
        raise InputError("step=sealed needs secrets: a list of {name, content | content_base64}")
    params = _node_params(p, vm, "sealed")
    out = SealedAndVerified(params, check_mode).run(backend)
    if out["verified"] is None:
        return {**out, "verified": [], "statement": None}
    # Nothing to describe in check mode: the sealed state it would describe is not there yet.
    out["statement"] = None if check_mode else built(params, True)["statement"]
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
    return verified(params, check_mode, module.warn)


def _fleet_entries(p: dict, *keys: str) -> list:
    vms = p["vms"]
    if (
        not isinstance(vms, list)
        or not vms
        or not all(isinstance(e, dict) and all(e.get(k) for k in keys) for e in vms)
    ):
        raise InputError(f"step={p['step']} with vms needs a list of entries, each with {', '.join(keys)}")
    return vms


def fleet_sealed(p: dict, check_mode: bool) -> dict:
    """Every VM of the fleet sealed and test-unsealed as step=sealed does, in this one run and under one backend
    context (the TPM's context opened once); each VM under its own locks."""
    entries = _fleet_entries(p, "identity")  # no policy key nor approval yet in check mode before the first run
    out, changed = [], False
    with open_backend(p["backend"], tcti=p["tcti"], state_dir=p["state_dir"]) as backend:
        for entry in entries:
            given = {
                "identity": entry["identity"],
                "policy_key": entry.get("policy_key"),
                "approval": entry.get("approval"),
            }
            done = sealed({**p, **given}, check_mode, backend)
            changed |= bool(done["changed"])
            out.append({"identity": entry["identity"], **{k: v for k, v in done.items() if k != "changed"}})
    return {"changed": changed, "vms": out}


def fleet_cached(p: dict, check_mode: bool, module) -> dict:
    """Every VM's recorded manifest verified and cached as step=cached does, in this one run."""
    out, changed = [], False
    for entry in _fleet_entries(p, "identity", "record"):
        done = cached({**p, "identity": entry["identity"], "record": entry["record"]}, check_mode, module)
        changed |= bool(done["changed"])
        out.append({"identity": entry["identity"], **{k: v for k, v in done.items() if k != "changed"}})
    return {"changed": changed, "vms": out}


def run_step(module) -> dict:
    p = module.params
    if p["step"] not in NODE_STEPS:
        raise InputError(
            f"step={p['step']} runs on the controller through the collection's action plugin; "
            "call the module by its full name ironclaw.sealed.ironclaw_provision"
        )
    if p["vms"] is not None:
        return (
            fleet_cached(p, module.check_mode, module) if p["step"] == "cached" else fleet_sealed(p, module.check_mode)
        )
    if p["step"] == "cached":
        return cached(p, module.check_mode, module)
    return sealed(p, module.check_mode)
