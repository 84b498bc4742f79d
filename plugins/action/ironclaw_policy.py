# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_policy runs entirely on the controller: policy keys never reach a node."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.argspec import (
    ArgumentSpec,
    controller_spec,
    vm_spec,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority import rules
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.journal import MoveJournal
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.ledger import (
    NodeView,
    VmLedger,
    controller_roots,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.node_record import (
    check_enrolled,
    verified_record,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    InputError,
    PlacementError,
    PolicyError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import (
    PolicyKeyStore,
    sign_approval,
    sign_grant,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.spec import parse_policy
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.action_module import IronclawAction

REQUIRED_IF = [
    ("state", "present", ("vmid", "vm_uuid")),
    ("state", "approved", ("vmid", "vm_uuid", "node", "node_name", "chain")),
    ("state", "granted", ("vmid", "vm_uuid", "node", "node_name", "chain", "target", "target_name", "not_after")),
    ("state", "placed", ("node", "node_name", "vms", "chains")),
]


def argument_spec() -> ArgumentSpec:
    """ironclaw_policy's options (it runs entirely here: the module file holds its documentation)."""
    return (
        vm_spec(required=False)
        .merge(controller_spec())
        .merge(ArgumentSpec(required_if=REQUIRED_IF))
        .update_argspec(
            state={"type": "str", "default": "present", "choices": ["present", "approved", "granted", "placed"]},
            node={"type": "dict"},
            node_name={"type": "str"},
            chain={"type": "list", "elements": "dict"},
            chains={"type": "dict"},
            vms={"type": "list", "elements": "dict"},
            provision={"type": "bool", "default": False},
            node_record={"type": "raw"},
            target={"type": "raw"},
            target_name={"type": "str"},
            not_after={"type": "str"},
            epoch={"type": "int"},
            pcrs={"type": "dict"},
            policy={"type": "raw"},
            now={"type": "str"},
        )
    )


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


def _target_binding(target, source_name: bytes):
    """The target's SRK name and public area, from its signed record (verified by the caller)."""
    name = canonical.tpm_name(target.srk_name, "target.srk_name")
    if name == source_name:
        raise InputError("the target is the source node itself: a VM cannot migrate to the node it is on")
    return name, canonical.b64decode(target.srk_public, "target.srk_public")


def _pcr_binding(pcrs: dict | None):
    if not pcrs:
        return None, None
    if not pcrs.get("selection") or not pcrs.get("digest"):
        raise InputError("pcrs needs selection and digest (the pcrs result of ironclaw_node)")
    return PcrSelection.parse(pcrs["selection"]), canonical.hex_bytes(pcrs["digest"], "pcrs.digest", 32)


def _node_view(name: str, node: dict, what: str) -> NodeView:
    if not node or not node.get("srk_name"):
        raise InputError(f"{what} needs the node's srk_name (the ironclaw_node result or its enrolled record)")
    return NodeView.of(name, canonical.tpm_name(node["srk_name"], f"{what}.srk_name"))


class ActionModule(IronclawAction):
    argument_spec = staticmethod(argument_spec)
    _requires_connection = False

    def run_action(self, args: dict) -> dict:
        self.require_crypto()
        return self._run(args, self._task.check_mode)

    @staticmethod
    def _run(args: dict, check_mode: bool) -> dict:
        now = clock(args["now"])
        if args["state"] == "placed":
            return _placed(args, now)
        store = PolicyKeyStore(args["controller_dir"])
        vmid, vm_uuid = args["vmid"], args["vm_uuid"]
        store.path(vmid, vm_uuid)  # validates vmid and uuid before anything happens
        store.refuse_destroyed(vmid, vm_uuid)
        spec = parse_policy(args["policy"])
        decision = None
        if args["state"] in ("approved", "granted"):
            # Decide before anything is created or signed: a refusal changes nothing.
            roots = controller_roots(args["controller_dir"], now)
            ledger = VmLedger.verify(vm_uuid, args["chain"], roots)
            decision = _decide(args, ledger, spec, now, roots)
        changed = False
        if not store.exists(vmid, vm_uuid):
            if args["state"] != "present" and not args["provision"]:
                raise PolicyError(
                    f"no policy key for VM {vmid} ({vm_uuid}) in {store.dir}: only provisioning creates one"
                )
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
            "policy": spec.to_dict() if decision is None else decision["policy"].to_dict(),
        }
        if args["state"] == "approved":
            node_name, nv_name, epoch = _node_binding(args["node"], args["epoch"])
            selection, digest = _pcr_binding(args["pcrs"])
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
            target_name, target_public = _target_binding(decision["target"], node_name)
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
            if not check_mode:
                out["changed"] = MoveJournal(args["controller_dir"]).put(decision["move"]) or out["changed"]
            out["grant"] = grant.to_dict()
            out["migration"] = decision["move"].to_dict()
        return out


def _decide(args: dict, ledger: VmLedger, spec, now, roots) -> dict:
    """The authority rules (module_utils/_authority/rules.py) for this request."""
    if args["node_record"] is not None or args["provision"]:
        # A node the ledger does not know yet is approved only as the node its signed record enrolled (A4).
        record = verified_record(args["node_record"], roots, args["node_name"], now)
        check_enrolled(record, args["node_name"], (args["node"] or {}).get("srk_name") or "(none)")
    node = _node_view(args["node_name"], args["node"], "node")
    if args["state"] == "approved":
        selection, _digest = _pcr_binding(args["pcrs"])
        policy = rules.approve_unseal(
            ledger,
            node,
            pcrs=None if selection is None else str(selection),
            now=now,
            provision=rules.requested_policy(args["provision"], args["policy"]),
            move=MoveJournal(args["controller_dir"]).get(ledger.vm_uuid),
        )
        return {"policy": policy}
    rules.requested_policy(args["provision"], args["policy"])
    # A3: the target is the node its signed record enrolled, verified here against the controller's own roots.
    record = verified_record(args["target"], roots, args["target_name"], now)
    backend = args["node"].get("backend")
    if backend and record.backend != backend:
        raise PlacementError(
            f"the target {args['target_name']} is enrolled with the {record.backend} backend, the source "
            f"{args['node_name']} uses {backend}: a keyslot moves only between nodes of the same backend"
        )
    target = NodeView.of(args["target_name"], record.srk_name)
    not_after = canonical.parse_timestamp(args["not_after"], "not_after")
    move = rules.grant_duplication(ledger, node, target, now=now, not_after=not_after)
    return {"policy": ledger.policy, "move": move, "target": record}


def _placed(args: dict, now) -> dict:
    """Which of a node's surviving VMs the ledger places on it (re-approve those only)."""
    node = _node_view(args["node_name"], args["node"], "node")
    roots = controller_roots(args["controller_dir"], now)
    vms = [
        {"vmid": validate.vmid(vm.get("vmid")), "vm_uuid": validate.vm_uuid(vm.get("vm_uuid"))} for vm in args["vms"]
    ]
    ledgers = {}
    for vm in vms:
        if vm["vm_uuid"] not in args["chains"]:
            raise InputError(f"chains has no entry for VM {vm['vmid']} ({vm['vm_uuid']}): list its chain first")
        ledgers[vm["vm_uuid"]] = VmLedger.verify(vm["vm_uuid"], args["chains"][vm["vm_uuid"]], roots)
    placed, refused = rules.sort_survivors(ledgers, vms, node, now)
    return {"changed": False, "placed": placed, "refused": refused}


def run_state(args: dict, check_mode: bool = False) -> dict:
    """The policy states for other controller actions (provision, migration, re-approval): `args` as for this
    action, the options left out taking their defaults."""
    return ActionModule._run({**argument_spec().defaults(), **args}, check_mode)
