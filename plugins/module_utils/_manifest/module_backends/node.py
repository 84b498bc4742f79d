# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_manifest's node states: built (describe the VM's sealed state), verified (every manifest rule on the
node, optionally a test-unseal, then cache), pinned (install the controller's trust roots)."""

from __future__ import annotations

from datetime import timedelta

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.cache import NodeCache
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.node_check import (
    as_envelopes,
    cache_verified,
    trusted_root,
    verify_on_node,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import make_statement
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.state import describe_vm
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import root_version
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import parse_ref, ref_of
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir, vm_locks


def need_params(p: dict, *names: str) -> None:
    missing = [n for n in names if p.get(n) is None]
    if missing:
        raise InputError(f"state={p['state']} needs {', '.join(missing)}")


def built(p: dict, _check_mode: bool) -> dict:
    need_params(p, "vmid", "vm_uuid", "node_name")
    vm = VmDir(p["state_dir"], p["vmid"], p["vm_uuid"])
    with vm_locks(p, check_mode=True):  # never describe a VM halfway through a seal
        keyslot = vm.keyslot()
        described = describe_vm(p["state_dir"], vm.vmid, vm.vm_uuid)
    statement = make_statement(
        described,
        vmid=vm.vmid,
        vm_uuid=vm.vm_uuid,
        vm_ctime=p["vm_ctime"],
        cluster=p["cluster"],
        node_name=p["node_name"],
        node_id=keyslot.node_name,
        migration=p["migration"],
    )
    return {"changed": False, "statement": statement}


def verified(p: dict, check_mode: bool, warn) -> dict:
    need_params(p, "vmid", "vm_uuid")
    now = clock(p["now"])
    vm = VmDir(p["state_dir"], p["vmid"], p["vm_uuid"])
    roots = as_envelopes(p["trust_roots"], "trust root")
    envelope = dsse.parse_envelope(p["envelope"], "manifest") if p["envelope"] else None
    floor = parse_ref(p["floor"], "floor") if p["floor"] else None
    head = dsse.parse_envelope(p["head"], "store head") if p["head"] else None
    with vm_locks(p, check_mode):
        manifest, root, envelope = verify_on_node(
            p["state_dir"],
            vmid=vm.vmid,
            vm_uuid=vm.vm_uuid,
            cluster=p["cluster"],
            vm_ctime=p["vm_ctime"],
            envelope=envelope,
            offered_roots=roots,
            floor=floor,
            now=now,
        )
        cache = NodeCache(p["state_dir"])
        if head is not None:  # A5: the store's head must not be older than this node's, and must list this version
            cache.check_head(head, root, vm.vm_uuid, ref_of(envelope, manifest))
        out = {
            "changed": False,
            "manifest": {
                "version": manifest.version,
                "expires": manifest.expires,
                "state": manifest.state,
                "node": manifest.node.name,
            },
        }
        left = canonical.parse_timestamp(manifest.expires, "manifest expires") - now
        if left < timedelta(days=p["warn_days"]):
            warn(
                f"VM {vm.vmid}'s manifest version {manifest.version} expires in {left.days} days ({manifest.expires}): "
                "re-run provision to re-issue it"
            )
        if p["unseal"]:
            with open_backend(p["backend"], tcti=p["tcti"], state_dir=p["state_dir"]) as backend:
                result = engine.verify(backend, vm)
            out["blobs"] = result["blobs"]
            if result["failed"]:
                details = "; ".join(b["error"] for b in result["blobs"] if not b["ok"])
                raise InputError(f"VM {vm.vmid}: the manifest verified but blob(s) did not unseal: {details}")
        if p["cache"] and not check_mode:
            out["changed"] = cache_verified(p["state_dir"], vm.vmid, envelope, roots)
            # The head moves with what the node accepts (a re-run that accepts nothing new changes nothing).
            if head is not None and (out["changed"] or cache.head() is None):
                out["changed"] |= cache.save_head(head)
    return out


def pinned(p: dict, check_mode: bool) -> dict:
    """Install the controller's trust roots on this node (at enrollment, then forward only): a node with
    no root yet trusts the chain it is given here, from the controller's own trust/ directory."""
    roots = as_envelopes(p["trust_roots"], "trust root")
    if not roots:
        raise InputError("state=pinned needs trust_roots: the controller's (ironclaw_manifest state=trusted)")
    cache = NodeCache(p["state_dir"])
    root = trusted_root(cache, roots, clock(p["now"]))
    have = {root_version(env) for env in cache.roots()}
    missing = [env for env in roots if root_version(env) not in have and root_version(env) <= root.version]
    if missing and not check_mode:
        cache.add_roots(missing)
    return {"changed": bool(missing), "trust_root": {"version": root.version}}
