# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_manifest's store-host states: stored (add to the store) and listed (read it); the controller checks
both against the store's signed head (plugins/action/ironclaw_manifest.py)."""

from __future__ import annotations

import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.module_backends.node import need_params
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.node_check import as_envelopes
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import (
    parse_manifest,
    statement_of,
    tombstone_statement,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import root_version
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import ForkError
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import parse_node_record
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.store import Store


def stored(p: dict, check_mode: bool) -> dict:
    """Add what is given to the store; return what it now holds (``view``), its head before this call
    and the keys of what this call put or found already there (``touched``): the controller signs the
    next head from them. ``head`` alone writes a head the controller signed."""
    need_params(p, "store_dir")
    store = Store(p["store_dir"])
    roots = as_envelopes(p["trust_roots"], "trust root")
    envelope = dsse.parse_envelope(p["envelope"], "manifest") if p["envelope"] else None
    receipt = dsse.parse_envelope(p["receipt"], "receipt") if p["receipt"] else None
    node_record = dsse.parse_envelope(p["node_record"], "node record") if p["node_record"] else None
    head = dsse.parse_envelope(p["head"], "store head") if p["head"] else None
    if envelope is None and not roots and receipt is None and node_record is None:
        if head is None:
            raise InputError("state=stored needs envelope, trust_roots, receipt, node_record and/or head")
        return {"changed": False if check_mode else store.put_head(head)}
    if receipt is not None and p["vm_uuid"] is None:
        raise InputError("storing a receipt needs vm_uuid")
    now = clock(p["now"])
    if check_mode:
        # Report what would be added; the checks themselves run when it is added.
        have = store.root_envelopes() if os.path.isdir(store.trust_dir) else []
        latest = store.latest(envelope_vm_uuid(envelope)) if envelope is not None else None
        new_manifest = envelope is not None and (latest is None or latest[0] != envelope)
        new_node = node_record is not None and store.read_node(_record_node(node_record)) != dsse.envelope_to_dict(
            node_record
        )
        changed = any(root not in have for root in roots) or new_manifest or receipt is not None or new_node
        return {"changed": changed}
    previous_head = store.head()
    changed = store.init()
    touched = []
    for root in roots:
        changed |= store.put_root(root, now)
        touched.append(f"trust/root-{root_version(root):08d}.json")
    out = {}
    if envelope is not None:
        try:
            changed |= store.put_manifest(envelope, now)
            out["envelope"] = dsse.envelope_to_dict(envelope)
        except ForkError:
            out["envelope"] = dsse.envelope_to_dict(_same_state_already_stored(store, envelope))
        touched.append(f"vm:{envelope_vm_uuid(envelope)}")
    if receipt is not None:
        changed |= store.put_receipt(p["vm_uuid"], receipt)
        touched.extend(_receipt_keys(store, p["vm_uuid"], receipt))
    if node_record is not None:
        changed |= store.put_node(node_record)
        touched.append(f"nodes/{_record_node(node_record)}.json")
    return {
        "changed": changed,
        **out,
        "head": None if previous_head is None else dsse.envelope_to_dict(previous_head),
        "view": store.view().to_dict(),
        "touched": touched,
    }


def _record_node(envelope) -> str:
    return parse_node_record(envelope.payload, "node record").node


def _receipt_keys(store: Store, vm_uuid: str, receipt) -> list[str]:
    """The receipt's file in the store (put_receipt numbers them)."""
    names = [
        f"receipts/{vm_uuid}-{index + 1:04d}.json"
        for index, stored_receipt in enumerate(store.receipts(vm_uuid))
        if stored_receipt == receipt
    ]
    return names


def _same_state_already_stored(store: Store, envelope):
    """Two runs on one VM at once sign the same next version; when both describe the same sealed
    state, the one stored first stands for both. Different states are a real fork: refuse."""
    manifest = parse_manifest(envelope.payload, "manifest")
    for stored_envelope, stored_manifest in store.chain(manifest.subject.vm_uuid):
        if stored_manifest.version == manifest.version and statement_of(stored_manifest) == statement_of(manifest):
            return stored_envelope
    raise ForkError(
        f"fork: version {manifest.version} of VM {manifest.subject.vmid} was stored meanwhile with another sealed "
        "state (two runs changed this VM at once); re-run to record the current state as the next version"
    )


def envelope_vm_uuid(envelope) -> str:
    return parse_manifest(envelope.payload, "manifest").subject.vm_uuid


def listed(p: dict, _check_mode: bool) -> dict:
    """What the store holds for a VM (by vm_uuid or vmid) and/or a node's record, with the store's head
    and view: the controller (the action plugin) checks them before any of it is used."""
    need_params(p, "store_dir")
    store = Store(p["store_dir"])
    out = {
        "changed": False,
        "trust_roots": [dsse.envelope_to_dict(env) for env in store.root_envelopes()],
        "head": None,
        "view": None,
    }
    if p["node_name"] is not None:
        out["node_record"] = store.read_node(p["node_name"])
    if p["vm_uuids"] is not None:
        # Several VMs' chains at once (a node's survivors after an epoch bump): the controller verifies them.
        out["chains"] = {
            uuid: [dsse.envelope_to_dict(env) for env, _manifest in store.chain(uuid)] for uuid in p["vm_uuids"]
        }
        floors = {uuid: store.floor(uuid) for uuid in p["vm_uuids"]}
        out["floors"] = {uuid: floor._asdict() if floor else None for uuid, floor in floors.items()}
    elif p["vm_uuid"] is not None:
        chain = store.chain(p["vm_uuid"])
        latest = chain[-1] if chain else None
        floor = store.floor(p["vm_uuid"])
        out.update(
            # Every envelope, oldest first: the controller decides from the whole chain, verified on its side.
            chain=[dsse.envelope_to_dict(env) for env, _manifest in chain],
            latest=dsse.envelope_to_dict(latest[0]) if latest else None,
            floor=floor._asdict() if floor else None,
            history=_history(store, p["vm_uuid"]),
            # What ends the chain, for decommission; null once it has ended.
            tombstone_statement=tombstone_statement(latest[1]) if latest and not latest[1].destroyed else None,
            receipts=[dsse.envelope_to_dict(env) for env in store.receipts(p["vm_uuid"])],
        )
    elif p["vmid"] is not None:
        out["vms"] = [{"vm_uuid": uuid, "history": _history(store, uuid)} for uuid in store.find(p["vmid"])]
    elif p["node_name"] is None:
        raise InputError("state=listed needs vm_uuid, vmid, vm_uuids or node_name")
    # Read last: a file that changed meanwhile shows as a disagreement with the head, never as trusted.
    head = store.head()
    out["head"] = None if head is None else dsse.envelope_to_dict(head)
    out["view"] = store.view().to_dict()
    return out


def _history(store: Store, vm_uuid: str) -> list[dict]:
    return [
        {
            "version": m.version,
            "issued_at": m.issued_at,
            "expires": m.expires,
            "state": m.state,
            "node": m.node.name,
            "blobs": len(m.blobs),
            "policy": m.policy.to_dict(),
            "migration": None if m.migration is None else m.migration.__dict__,
        }
        for m in store.history(vm_uuid)
    ]
