# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verification on a node: the trust roots and floor it already holds count, not only what it is sent."""

from __future__ import annotations

from datetime import datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    InputError,
    RollbackError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.cache import NodeCache
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import parse_manifest
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.state import describe_vm
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import (
    load_chain,
    verify_history,
    walk,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import (
    ForkError,
    ManifestRef,
    check_files,
    ref_of,
    verify_manifest,
)


def trusted_root(cache: NodeCache, offered: list, now: datetime):
    """The node's cached roots are the starting point; offered roots may only move it forward.

    With nothing cached, the offered chain is trusted on first use (as when a node is enrolled).
    """
    cached = cache.roots()
    if cached:
        return walk(verify_history(cached, "cached trust root"), offered, now)
    if not offered:
        raise InputError(
            "this node holds no trust root and none was given: run the verify playbook from the controller"
        )
    return load_chain(offered, now)


def node_floor(cache: NodeCache, vmid: int, vm_uuid: str, given: ManifestRef | None) -> ManifestRef | None:
    """The highest of the store's floor, the node's cached manifest and the node's floor record for the VM.

    The cached manifest was verified when it was cached (possibly under a trust
    root rotated away since), so only its place in the chain is read here. The
    floor record lives outside the VM's directory, so it survives a restore of
    an old copy of that directory, old manifest.json included. Two of them at
    the same version with different digests are a fork.
    """
    cached = cache.manifest(vmid)
    mine = ref_of(cached, parse_manifest(cached.payload, "cached manifest")) if cached is not None else None
    candidates = [
        (what, ref)
        for what, ref in (
            ("the given floor", given),
            ("this node's floor record", cache.floor(vm_uuid)),
            ("this node's cached manifest", mine),
        )
        if ref is not None
    ]
    if not candidates:
        return None
    top = max(ref.version for _what, ref in candidates)
    at_top = [(what, ref) for what, ref in candidates if ref.version == top]
    for what, ref in at_top[1:]:
        if ref.digest != at_top[0][1].digest:
            raise ForkError(
                f"fork: VM {vmid} ({vm_uuid}) has two different manifests at version {top}: {at_top[0][0]} "
                f"(sha256 {at_top[0][1].digest[:16]}…) and {what} (sha256 {ref.digest[:16]}…); "
                "find out who signed the second one"
            )
    return at_top[0][1]


def verify_on_node(
    state_dir: str,
    *,
    vmid: int,
    vm_uuid: str,
    cluster: str,
    vm_ctime: int | None,
    envelope,
    offered_roots: list,
    floor: ManifestRef | None,
    now: datetime,
):
    """(manifest, root, envelope) after rules 1-5 against the files under state_dir."""
    cache = NodeCache(state_dir)
    root = trusted_root(cache, offered_roots, now)
    if envelope is None:
        envelope = cache.manifest(vmid)
        if envelope is None:
            raise InputError(f"no manifest given for VM {vmid} and none is cached on this node")
    manifest = verify_manifest(
        envelope,
        root=root,
        now=now,
        floor=node_floor(cache, vmid, vm_uuid, floor),
        expected={"vmid": vmid, "vm_uuid": vm_uuid, "cluster": cluster, "vm_ctime": vm_ctime},
        actual=describe_vm(state_dir, vmid, vm_uuid),
    )
    return manifest, root, envelope


def verify_cached(state_dir: str, *, vmid: int, vm_uuid: str, cluster: str, vm_ctime: int | None, now: datetime):
    """Rules 1-5 from what this node holds alone (its cached manifest, trust roots and floor record): the manifest.

    Nothing is taken from the caller but the VM's identity. A blob older than the generation the manifest records
    (put back from a backup) is a rollback; any other difference in the files is a VerificationError.
    """
    cache = NodeCache(state_dir)
    envelope = cache.manifest(vmid)
    if envelope is None:
        raise VerificationError(
            f"VM {vmid} has no cached manifest on this node ({cache.manifest_path(vmid)} is missing), so its sealed "
            "state cannot be checked before it is unsealed: publish it (the provision playbook) or run the verify "
            "playbook for the VM, which verifies its newest signed manifest and caches it here"
        )
    manifest = verify_manifest(
        envelope,
        root=trusted_root(cache, [], now),
        now=now,
        floor=node_floor(cache, vmid, vm_uuid, None),
        expected={"vmid": vmid, "vm_uuid": vm_uuid, "cluster": cluster, "vm_ctime": vm_ctime},
        actual=None,
    )
    actual = describe_vm(state_dir, vmid, vm_uuid)
    recorded = {blob.name: blob.generation for blob in manifest.blobs}
    older = [
        f"blob '{blob['name']}' is generation {blob['generation']}, the manifest records {recorded[blob['name']]}"
        for blob in actual["blobs"]
        if blob["generation"] < recorded.get(blob["name"], 0)
    ]
    if older:
        raise RollbackError(
            f"rollback: VM {vmid}'s files on this node are older than its manifest version {manifest.version}: "
            f"{'; '.join(older)}. An old copy was put back (from a backup?); nothing was unsealed. Restore the "
            "current files (or migrate the VM back from the node that holds them)"
        )
    check_files(manifest, actual)
    return manifest


def cache_verified(state_dir: str, vmid: int, envelope, offered_roots: list) -> bool:
    cache = NodeCache(state_dir)
    added = cache.add_roots(offered_roots)
    return bool(added) | cache.save_manifest(vmid, envelope)


def as_envelopes(docs, what: str) -> list:
    return [dsse.parse_envelope(doc, f"{what} {index + 1}") for index, doc in enumerate(docs or [])]
