# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a node does in a migration, for every VM of the run at once, under one backend context.

Each function is one step's node half (the ironclaw_migration module calls it once per step): ``inspect`` (facts,
Proxmox identities, what the node holds; changes nothing), ``verify`` (the source's state against the signed
manifests), ``export`` (bundles under the controller's grants), ``import_`` (the target takes the
bundles, test-unseals them, describes what to record), ``cache`` (the recorded manifests cached, bundles removed),
``revoke`` (the source copies destroyed under one epoch bump) and ``approve`` (the survivors' new approvals).
"""

from __future__ import annotations

import glob
import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    BackendError,
    InputError,
    TpmError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import ensure_dir, write_atomic
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.node import destroy_many_on_node, surviving_vms
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.approval import approval_from_dict
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.grant import grant_from_dict
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.bundle_check import verify_bundle
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.cache import NodeCache
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.node_check import (
    as_envelopes,
    cache_verified,
    verify_on_node,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import make_statement
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.state import describe_vm
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import parse_ref, ref_of
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine, transfer
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir


def _vm(state_dir: str, entry: dict) -> VmDir:
    return VmDir(state_dir, validate.vmid(entry.get("vmid")), validate.vm_uuid(entry.get("vm_uuid")))


def read_facts(backend, selections) -> dict:
    """The node's public facts, with the PCR digest of each selection asked for (one read per selection)."""
    facts = backend.facts(None).to_result()
    facts["pcr_digests"] = {}
    for text in selections or ():
        read = backend.facts(PcrSelection.parse(text)).to_result()["pcrs"]
        facts["pcr_digests"][text] = read
    return facts


def quote(backend, selections, nonce_b64: str | None) -> dict:
    """Each selection quoted by the AK under the controller's nonce (tpm2; DESIGN §8), keyed by the selection as
    given: {pcrs, attest, signature, pcr_values}, or {error} where the TPM refused. Nothing without a nonce."""
    if not nonce_b64 or not selections:
        return {}
    if backend.backend != "tpm2":
        return {sel: {"error": "the software backend has no TPM to quote PCRs with"} for sel in selections}
    from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.attest import Attestor  # noqa: PLC0415

    nonce = canonical.b64decode(nonce_b64, "quote_nonce")
    out = {}
    with Attestor(backend.node, with_certificate=False) as attestor:
        for sel in selections:
            try:
                got = attestor.quote(nonce, PcrSelection.parse(sel))
            except (TpmError, BackendError) as err:
                out[sel] = {"error": str(err)}
                continue
            out[sel] = {
                "pcrs": sel,
                "attest": canonical.b64encode(got.attest),
                "signature": canonical.b64encode(got.signature),
                "pcr_values": {key: value.hex() for key, value in got.pcr_values.items()},
            }
    return out


def inspect(backend, state_dir: str, vms: list[dict], *, selections=(), proxmox=None, quote_nonce=None) -> dict:
    """Facts once, each VM's Proxmox identity (`proxmox(vmid)`, when given) and what this node holds for it:
    its keyslot, and its bundle (this VM's uuid when known, else any bundle of the VMID); and every VM sealed here
    (`resident`: the source's VMs that will need new approvals after its epoch bump)."""
    resident, _unusable = surviving_vms(state_dir, set())
    out = {"node": read_facts(backend, () if quote_nonce else selections), "vms": {}, "resident": resident}
    if quote_nonce:
        out["node"]["quotes"] = quote(backend, selections, quote_nonce)
    for entry in vms:
        vmid = validate.vmid(entry.get("vmid"))
        uuid = entry.get("vm_uuid") or ""
        pattern = f"{vmid}-{uuid}.bundle.json" if uuid else f"{vmid}-*.bundle.json"
        out["vms"][str(vmid)] = {
            "keyslot": os.path.lexists(os.path.join(state_dir, str(vmid), "keyslot.json")),
            "bundles": sorted(
                os.path.basename(p)[len(f"{vmid}-") : -len(".bundle.json")]
                for p in glob.glob(os.path.join(state_dir, transfer.TRANSFER_DIR, pattern))
            ),
            "proxmox": proxmox(vmid) if proxmox is not None else None,
        }
    return out


def _manifest_args(entry: dict, roots_docs):
    envelope = dsse.parse_envelope(entry["envelope"], "manifest")
    floor = parse_ref(entry["floor"], "floor") if entry.get("floor") else None
    return envelope, as_envelopes(roots_docs, "trust root"), floor


def _verified(state_dir: str, entry: dict, trust_roots, cluster: str, now):
    """(vm, manifest, root, envelope, roots): the VM's files here against the entry's manifest (rules 1-5), with the
    entry's floor when it has one (else the node's own)."""
    vm = _vm(state_dir, entry)
    envelope, roots, floor = _manifest_args(entry, trust_roots)
    manifest, root, envelope = verify_on_node(
        state_dir,
        vmid=vm.vmid,
        vm_uuid=vm.vm_uuid,
        cluster=cluster,
        vm_ctime=entry.get("vm_ctime"),
        envelope=envelope,
        offered_roots=roots,
        floor=floor,
        now=now,
    )
    return vm, manifest, root, envelope, roots


def verify(state_dir: str, vms: list[dict], *, trust_roots, cluster: str, now) -> dict:
    """Every VM's files against its newest signed manifest (and floor): their SHA-256s are what the manifest
    records, which was made from a test-unsealed state. No TPM work: the export's TPM2_Duplicate then exercises each
    keyslot (before its VM is stopped), and the target test-unseals every blob before it writes anything."""
    out = {}
    for entry in vms:
        vm, manifest, _root, _envelope, _roots = _verified(state_dir, entry, trust_roots, cluster, now)
        if not manifest.blobs:
            raise VerificationError(f"VM {vm.vmid} has no sealed secrets to migrate (manifest v{manifest.version})")
        out[str(vm.vmid)] = {"version": manifest.version, "expires": manifest.expires, "blobs": len(manifest.blobs)}
    return out


def export(backend, state_dir: str, vms: list[dict], *, now, check_mode: bool, prepare=None) -> dict:
    """Each VM's bundle for its grant's target (written under state_dir/transfer); `prepare(vmid, vm_uuid)` stops
    the VM first. Returns each VM's result, and the bundle's bytes for the controller to carry."""
    out = {}
    for entry in vms:
        vm = _vm(state_dir, entry)
        path = transfer.bundle_path(state_dir, vm.vmid, vm.vm_uuid)
        result = transfer.export_vm(
            backend,
            vm,
            grant_from_dict(entry["grant"], "grant"),
            migration=entry["migration"],
            manifest={"version": entry["manifest"]["version"], "digest": entry["manifest"]["digest"]},
            path=path,
            now=now,
            check_mode=check_mode,
            prepare=None if prepare is None else (lambda vm=vm: prepare(vm.vmid, vm.vm_uuid)),
        )
        if not check_mode:
            with open(path, "rb") as handle:
                result["bundle"] = handle.read().decode("utf-8")
        out[str(vm.vmid)] = result
    return out


def _bundle_check(state_dir: str, envelope, roots, floor, cluster: str, vm_ctime, now):
    def check(bundle):
        verify_bundle(
            state_dir,
            bundle,
            envelope=envelope,
            offered_roots=roots,
            floor=floor,
            cluster=cluster,
            vm_ctime=vm_ctime,
            now=now,
        )

    return check


def import_(
    backend, state_dir: str, vms: list[dict], *, trust_roots, cluster: str, node_name: str, now, check_mode: bool
) -> dict:
    """Each VM's bundle (given as text) written under state_dir/transfer, verified against the manifest it was
    exported from, imported under this node and test-unsealed; then the statement of the sealed state to record."""
    out = {}
    for entry in vms:
        vm = _vm(state_dir, entry)
        path = transfer.bundle_path(state_dir, vm.vmid, vm.vm_uuid)
        if entry.get("bundle") is not None and not check_mode:
            ensure_dir(os.path.dirname(path), 0o700)
            write_atomic(path, entry["bundle"].encode("utf-8"), 0o600)
        envelope, roots, floor = _manifest_args(entry, trust_roots)

        check = _bundle_check(state_dir, envelope, roots, floor, cluster, entry.get("vm_ctime"), now)
        approval = approval_from_dict(entry["approval"], "approval")
        result = transfer.import_vm(backend, vm, approval, path=path, now=now, check_mode=check_mode, verify=check)
        if result.get("migration") is None:
            raise InputError(
                f"VM {vm.vmid}'s state is on this node, but no bundle says how it got here: run the migration from "
                "the node the store places it on"
            )
        if not check_mode:
            result["statement"] = _statement(state_dir, vm, entry, cluster, node_name, result["migration"])
        out[str(vm.vmid)] = result
    return out


def _statement(state_dir: str, vm: VmDir, entry: dict, cluster: str, node_name: str, migration=None) -> dict:
    """What the controller would record for the VM's sealed state here (`migration` when it arrived by one)."""
    return make_statement(
        describe_vm(state_dir, vm.vmid, vm.vm_uuid),
        vmid=vm.vmid,
        vm_uuid=vm.vm_uuid,
        vm_ctime=entry.get("vm_ctime"),
        cluster=cluster,
        node_name=node_name,
        node_id=vm.keyslot().node_name,
        migration=migration,
    )


def describe(state_dir: str, vms: list[dict], *, cluster: str, node_name: str) -> dict:
    """The statement of each VM's sealed state here (what the controller would record)."""
    out = {}
    for entry in vms:
        vm = _vm(state_dir, entry)
        out[str(vm.vmid)] = _statement(state_dir, vm, entry, entry.get("cluster") or cluster, node_name)
    return out


def cache(state_dir: str, vms: list[dict], *, trust_roots, cluster: str, head, now, check_mode: bool) -> dict:
    """Each VM's recorded manifest verified against its files here and cached (with the store's head); then its
    bundle here is removed (the store records the move)."""
    out = {}
    head_envelope = dsse.parse_envelope(head, "store head") if head else None
    node_cache = NodeCache(state_dir)
    changed = False
    for entry in vms:
        vm, manifest, root, envelope, roots = _verified(state_dir, entry, trust_roots, cluster, now)
        if head_envelope is not None:
            node_cache.check_head(head_envelope, root, vm.vm_uuid, ref_of(envelope, manifest))
        cached = False if check_mode else cache_verified(state_dir, vm.vmid, envelope, roots)
        removed = transfer.remove_bundle(transfer.bundle_path(state_dir, vm.vmid, vm.vm_uuid), check_mode)
        out[str(vm.vmid)] = {"version": manifest.version, "cached": cached, "bundle_removed": removed}
        changed |= cached or removed
    if head_envelope is not None and not check_mode and (changed or node_cache.head() is None):
        changed |= node_cache.save_head(head_envelope)
    return {"changed": changed, "vms": out}


def revoke(
    backend, state_dir: str, vms: list[dict], *, now: str, check_mode: bool, selections=(), quote_nonce=None
) -> dict:
    """The source copies destroyed under one epoch bump, their bundles removed; the node's facts after it, with
    `selections` quoted under the controller's `quote_nonce` when given (for the survivors' new approvals)."""
    result = destroy_many_on_node(
        backend,
        state_dir,
        [(validate.vmid(v["vmid"]), validate.vm_uuid(v["vm_uuid"])) for v in vms],
        now=now,
        check_mode=check_mode,
    )
    for entry in vms:
        vm = _vm(state_dir, entry)
        result["changed"] |= transfer.remove_bundle(transfer.bundle_path(state_dir, vm.vmid, vm.vm_uuid), check_mode)
    result["node"] = read_facts(backend, () if quote_nonce else selections)
    if quote_nonce:
        result["node"]["quotes"] = quote(backend, selections, quote_nonce)
    return result


def approve(backend, state_dir: str, vms: list[dict], *, check_mode: bool) -> dict:
    """Install each VM's new approval (checked against its keyslot and this node first)."""
    out = {}
    for entry in vms:
        vm = _vm(state_dir, entry)
        out[str(vm.vmid)] = engine.install_approval(
            backend, vm, approval_from_dict(entry["approval"], "approval"), check_mode=check_mode
        )
    return {"changed": any(r["changed"] for r in out.values()), "vms": out}
