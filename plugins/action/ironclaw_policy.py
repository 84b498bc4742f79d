# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_policy runs entirely on the controller: policy keys never reach a node."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, IronclawError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto import lib as crypto_lib
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import (
    PolicyKeyStore,
    sign_approval,
    sign_grant,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.spec import parse_policy

DEFAULT_CONTROLLER_DIR = "~/.local/share/ironclaw"

ARGUMENT_SPEC = {
    "state": {"type": "str", "default": "present", "choices": ["present", "approved", "granted"]},
    "vmid": {"type": "int", "required": True},
    "vm_uuid": {"type": "str", "required": True},
    "controller_dir": {"type": "path", "default": DEFAULT_CONTROLLER_DIR},
    "node": {"type": "dict"},
    "target": {"type": "dict"},
    "epoch": {"type": "int"},
    "pcrs": {"type": "dict"},
    "policy": {"type": "raw"},
}


def _node_binding(node: dict, epoch_override):
    if not node:
        raise InputError(
            "state=approved and state=granted need node: "
            "the ironclaw_node result (srk_name, epoch_nv_name, epoch) or record"
        )
    missing = [k for k in ("srk_name", "epoch_nv_name") if not node.get(k)]
    if missing:
        raise InputError(
            f"node is missing {', '.join(missing)}: is the node provisioned (ironclaw_node state=present)?"
        )
    epoch = epoch_override if epoch_override is not None else node.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise InputError(f"the epoch to approve must be a non-negative integer, got {epoch!r}")
    return (
        canonical.tpm_name(node["srk_name"], "node.srk_name"),
        canonical.tpm_name(node["epoch_nv_name"], "node.epoch_nv_name"),
        epoch,
    )


def _target_binding(target: dict | None, source_name: bytes):
    if not target or not target.get("srk_name") or not target.get("srk_public"):
        raise InputError(
            "state=granted needs target: the target node's enrolled record (srk_name, srk_public); "
            "is the target enrolled (ironclaw.sealed.enroll)?"
        )
    name = canonical.tpm_name(target["srk_name"], "target.srk_name")
    if name == source_name:
        raise InputError("the target is the source node itself: a VM cannot migrate to the node it is on")
    return name, canonical.b64decode(target["srk_public"], "target.srk_public")


def _pcr_binding(pcrs: dict | None):
    if not pcrs:
        return None, None
    if not pcrs.get("selection") or not pcrs.get("digest"):
        raise InputError("pcrs needs selection and digest (the pcrs result of ironclaw_node)")
    return PcrSelection.parse(pcrs["selection"]), canonical.hex_bytes(pcrs["digest"], "pcrs.digest", 32)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _valid, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        if crypto_lib.missing():
            result.update(failed=True, msg=crypto_lib.missing())
            return result
        try:
            result.update(self._run(args, self._task.check_mode))
        except IronclawError as exc:
            result.update(failed=True, msg=str(exc), error=type(exc).__name__)
        return result

    @staticmethod
    def _run(args: dict, check_mode: bool) -> dict:
        store = PolicyKeyStore(args["controller_dir"])
        vmid, vm_uuid = args["vmid"], args["vm_uuid"]
        store.path(vmid, vm_uuid)  # validates vmid and uuid before anything happens
        store.refuse_destroyed(vmid, vm_uuid)
        spec = parse_policy(args["policy"])
        changed = False
        if not store.exists(vmid, vm_uuid):
            if check_mode:
                return {
                    "changed": True,
                    "policy_key": None,
                    "key_name": None,
                    "policy": spec.to_dict(),
                    "msg": "would create the policy key",
                }
            changed = store.create(vmid, vm_uuid)
        public, name = store.public(vmid, vm_uuid)
        out = {
            "changed": changed,
            "policy_key": canonical.b64encode(public),
            "key_name": name.hex(),
            "policy": spec.to_dict(),
        }
        if args["state"] == "approved":
            node_name, nv_name, epoch = _node_binding(args["node"], args["epoch"])
            selection, digest = _pcr_binding(args["pcrs"])
            if spec.pcrs is not None and selection != spec.pcrs:
                raise InputError(
                    f"the policy binds PCRs {spec.pcrs}, but pcrs gives {selection or 'none'}: pass the node's "
                    f"pcrs result for that selection (ironclaw_node pcrs={spec.pcrs})"
                )
            approval = sign_approval(
                store.load(vmid, vm_uuid),
                vmid=vmid,
                vm_uuid=vm_uuid,
                node_name=node_name,
                epoch_nv_name=nv_name,
                epoch=epoch,
                pcrs=selection,
                pcr_digest=digest,
            )
            out["approval"] = approval.to_dict()
        if args["state"] == "granted":
            node_name, nv_name, epoch = _node_binding(args["node"], args["epoch"])
            target_name, target_public = _target_binding(args["target"], node_name)
            grant = sign_grant(
                store.load(vmid, vm_uuid),
                vmid=vmid,
                vm_uuid=vm_uuid,
                source_name=node_name,
                source_epoch_nv_name=nv_name,
                epoch=epoch,
                target_name=target_name,
                target_public=target_public,
            )
            out["grant"] = grant.to_dict()
        return out
