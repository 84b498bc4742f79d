# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_destroy: the policy key and the receipt are handled here on the controller; the node state
(absent) runs as a module on the node."""

from __future__ import annotations

import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.destroy_states import argument_spec
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    InputError,
    IronclawError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.plan import choose_vm
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.receipt import (
    adds_to,
    build_receipt,
    sign_receipt,
    tombstone_ref,
    verify_receipt,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, requests
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.keystore import TrustKeyStore
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import parse_manifest
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import load_chain
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import envelope_digest
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import PolicyKeyStore
from ansible_collections.ironclaw.sealed.plugins.plugin_utils import reapproval
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.action_module import IronclawAction, ModuleFailed

# The node half that installs approvals after an epoch bump (shared with the migration's revocation).
NODE_HALF = "ironclaw.sealed.ironclaw_migration"


def one_vm(args: dict) -> tuple[int, str]:
    if args["vmid"] is None or args["vm_uuid"] is None or args["vms"] is not None:
        raise InputError(f"state={args['state']} takes one VM: vmid and vm_uuid (not vms)")
    return args["vmid"], args["vm_uuid"]


def revoked(args: dict, check_mode: bool) -> dict:
    store = PolicyKeyStore(args["controller_dir"])
    vmid, vm_uuid = one_vm(args)
    key_name = store.public(vmid, vm_uuid)[1].hex() if store.exists(vmid, vm_uuid) else None
    already = store.destroyed_at(vmid, vm_uuid)
    if already and key_name is None:
        return {
            "changed": False,
            "policy_key": {"key_name": None, "destroyed_at": already, "status": "already-destroyed"},
        }
    if check_mode:
        return {"changed": True, "policy_key": {"key_name": key_name, "destroyed_at": None, "status": "would-destroy"}}
    now = canonical.utc_timestamp(clock(args["now"]))
    store.destroy(vmid, vm_uuid, now)
    return {
        "changed": True,
        "policy_key": {"key_name": key_name, "destroyed_at": store.destroyed_at(vmid, vm_uuid), "status": "destroyed"},
    }


def _chain_end_tombstone(args: dict):
    """(ref, request): the tombstone the receipt names, from the chain's end when the store has it, else
    (offline) from the request for the tombstone that ends the chain, which is returned too."""
    if not args["chain_end"]:
        return None, None
    end = dsse.parse_envelope(args["chain_end"], "the store's newest manifest")
    manifest = parse_manifest(end.payload, "the store's newest manifest")
    if manifest.destroyed:
        return tombstone_ref(manifest, end.payload), None
    if args["signing"] != "offline" or not args["sign_dir"]:
        return None, None
    request = requests.pending_manifest(args["sign_dir"], manifest.subject.vm_uuid, manifest.version + 1)
    if request is None or not request.document.destroyed or request.document.prev != envelope_digest(end):
        return None, None
    return tombstone_ref(request.document, request.payload), request


def _waiting_message(args: dict, vmid: int, waiting) -> str:
    listed = "; ".join(f"{request.path} (digest {request.digest})" for request in waiting)
    return (
        f"VM {vmid}: what could be destroyed is destroyed; {len(waiting)} signature(s) wait for the offline "
        f"machine: {listed}. Carry {args['sign_dir']} there, run ansible-playbook ironclaw.sealed.sign "
        f"-e ironclaw_sign_dir={args['sign_dir']} and confirm these digests, bring the directory back and re-run "
        f"ironclaw.sealed.decommission for VM {vmid}: the re-run destroys nothing again, it stores what was signed"
    )


def receipted(args: dict, check_mode: bool) -> dict:
    """Sign (online) or request (offline) a receipt when this run adds to the newest one already issued;
    offline, also hand back the receipts the offline machine signed since, for the store."""
    vmid, vm_uuid = one_vm(args)
    offline = args["signing"] == "offline"
    if offline and not args["sign_dir"]:
        raise InputError("ironclaw_signing offline needs sign_dir: where signing requests are exchanged")
    now = clock(args["now"])
    keys_store = TrustKeyStore(args["controller_dir"])
    root = load_chain(keys_store.roots(), now)
    issued = []  # (document, envelope or None) of every receipt issued so far: stored, returned, waiting
    stored = [dsse.parse_envelope(r, "stored receipt") for r in args["stored_receipts"] or []]
    for envelope in stored:
        try:
            issued.append((verify_receipt(envelope, root), envelope))
        except VerificationError:
            continue  # signed under an older root, or not ours: never a reason to skip a receipt
    to_store, waiting = [], []
    if offline:
        for request, envelope in requests.receipt_requests(args["sign_dir"], vm_uuid):
            if envelope is None:
                waiting.append(request)
            elif envelope not in stored:
                verify_receipt(envelope, root)
                to_store.append(envelope)
            issued.append((request.document, envelope))
    tombstone, tombstone_request = _chain_end_tombstone(args)
    if tombstone_request is not None and not os.path.exists(tombstone_request.signed_path):
        waiting.insert(0, tombstone_request)
    document = build_receipt(
        vmid=vmid,
        vm_uuid=vm_uuid,
        cluster=args["cluster"],
        policy_key=args["policy_key"],
        tombstone=tombstone,
        locations=args["locations"],
        issued_at=canonical.utc_timestamp(now),
    )
    newest = max(issued, key=lambda item: item[0]["issued_at"])[0] if issued else None
    needed = adds_to(document, newest)
    out = {"changed": False, "document": document, "needed": needed}
    if check_mode:
        return {**out, "receipts": [], "pending": []}
    if needed and offline:
        waiting.append(requests.request_receipt(args["sign_dir"], document))
        out["changed"] = True
    elif needed:
        keys = [k for k in keys_store.load_keys() if dsse.keyid_of(dsse.raw_public(k)) in root.keys]
        if len(keys) < root.threshold:
            raise InputError(
                f"signing the destruction receipt needs {root.threshold} trust-root key(s); this controller holds "
                f"{len(keys)}: with the keys on an offline machine, set ironclaw_signing: offline"
            )
        to_store.append(sign_receipt(document, keys))
        out["changed"] = True
    if waiting:
        out["msg"] = _waiting_message(args, vmid, waiting)
    return {
        **out,
        "receipts": [dsse.envelope_to_dict(envelope) for envelope in to_store],
        "pending": [{"path": request.path, "digest": request.digest} for request in waiting],
    }


def planned(args: dict, _check_mode: bool) -> dict:
    """Which VM to destroy: the only one the store knows under the VMID, or the uuid given among them."""
    vm_uuid = choose_vm(args["vmid"], args["vm_uuid"], args["found"], args["store_dir"] or "the store")
    return {"changed": False, "vm_uuid": vm_uuid}


HANDLERS = {"planned": planned, "revoked": revoked, "receipted": receipted}


class ActionModule(IronclawAction):
    argument_spec = staticmethod(argument_spec)
    HANDLERS = HANDLERS

    def run_action(self, args: dict) -> dict:
        """state=absent with reapprove: destroy on the node, then renew the approvals of the VMs that stay there
        (plugin_utils/reapproval.py), all in this one task."""
        reapprove = self._task.args.get("reapprove")
        if args["state"] != "absent" or reapprove is None:
            return super().run_action(args)
        module_args = {k: v for k, v in self._task.args.items() if k != "reapprove"}
        result = self._execute_module(module_args=module_args, task_vars=self._vars)
        if result.get("failed") or self._task.check_mode or not result.get("survivors"):
            return result
        node = {k: module_args[k] for k in ("backend", "tcti", "state_dir") if module_args.get(k) is not None}

        def node_call(step, **more):
            try:
                return self.run_module(NODE_HALF, {**node, "step": step, **more})
            except ModuleFailed as failed:
                raise InputError(failed.result.get("msg", "the node step failed")) from None

        try:
            controller_dir = os.path.expanduser(args["controller_dir"])
            now = clock(args["now"])
            chains = reapprove.get("chains") or {}
            # The survivors' PCR selections are quoted in the facts' run (one for all of them) under a fresh nonce.
            nonce, quote = reapproval.quote_args(
                reapproval.pcr_selections(chains, controller_dir, now) if node.get("backend") != "software" else []
            )
            facts = node_call("inspected", vms=[], pve=False, **quote)["node"]
            quotes = facts.pop("quotes", None)
            done = reapproval.reapprove(
                node_call,
                controller_dir=controller_dir,
                node_name=reapprove["node_name"],
                facts=facts,
                survivors=result["survivors"],
                chains=chains,
                backend=facts["backend"],
                now=now,
                node_record=reapprove.get("node_record"),
                quoted=(nonce, quotes) if quotes else None,
            )
        except IronclawError as exc:
            return {
                **result,
                "failed": True,
                "msg": f"VM {args['vmid']} was destroyed here and the epoch bumped, but re-approving the VMs "
                f"that stay failed: {exc}. Re-run the decommission: it re-approves them",
                "error": type(exc).__name__,
            }
        result["reapproved"] = {"approved": done["approved"], "refused": done["refused"]}
        result["rewrapped"] = list(done["statements"].values())
        # The same VMs as entries of the provision steps' fleet form: recorded, then cached, in one task each.
        result["rewrapped_vms"] = [
            {
                "identity": {
                    "vmid": statement["subject"]["vmid"],
                    "uuid": statement["subject"]["vm_uuid"],
                    "ctime": statement["subject"]["vm_ctime"],
                },
                "statement": statement,
            }
            for statement in result["rewrapped"]
        ]
        result["changed"] = result["changed"] or done["changed"]
        return result
