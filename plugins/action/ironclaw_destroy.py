# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_destroy: the policy key and the receipt are handled here on the controller; the node state
(absent) runs as a module on the node."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.destroy_states import SPEC
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.manifest_states import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.receipt import build_receipt, sign_receipt
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.keystore import TrustKeyStore
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import load_chain
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import PolicyKeyStore
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.split_action import SplitAction


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


def receipted(args: dict, check_mode: bool) -> dict:
    if not args["locations"] or not args["policy_key"]:
        raise InputError("state=receipted needs locations (one per node) and policy_key (from state=revoked)")
    vmid, vm_uuid = one_vm(args)
    now = clock(args["now"])
    document = build_receipt(
        vmid=vmid,
        vm_uuid=vm_uuid,
        cluster=args["cluster"],
        policy_key=args["policy_key"],
        tombstone=args["tombstone"],
        locations=args["locations"],
        issued_at=canonical.utc_timestamp(now),
    )
    if check_mode:
        return {"changed": False, "document": document, "receipt": None}
    keys_store = TrustKeyStore(args["controller_dir"])
    root = load_chain(keys_store.roots(), now)
    keys = [k for k in keys_store.load_keys() if dsse.keyid_of(dsse.raw_public(k)) in root.keys]
    if len(keys) < root.threshold:
        raise InputError(
            f"signing the destruction receipt needs {root.threshold} trust-root key(s); "
            f"this controller holds {len(keys)}"
        )
    envelope = sign_receipt(document, keys)
    return {"changed": True, "document": document, "receipt": dsse.envelope_to_dict(envelope)}


HANDLERS = {"revoked": revoked, "receipted": receipted}


class ActionModule(SplitAction):
    SPEC = SPEC
    DEFAULT_STATE = "absent"
    HANDLERS = HANDLERS
