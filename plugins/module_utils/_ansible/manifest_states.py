# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_manifest's option set and its node and store states (the controller states live in the action plugin)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.options import vm_locks
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.cache import NodeCache
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.node_check import (
    as_envelopes,
    cache_verified,
    trusted_root,
    verify_on_node,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import (
    make_statement,
    parse_manifest,
    statement_of,
    tombstone_statement,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.state import describe_vm
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import root_version
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import ForkError, parse_ref, ref_of
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import parse_node_record
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.store import Store

CONTROLLER_STATES = ("trusted", "signed", "requests", "enrolled")

SPEC = {
    "state": {
        "type": "str",
        "required": True,
        "choices": ["trusted", "built", "signed", "requests", "stored", "listed", "verified", "enrolled", "pinned"],
    },
    "vmid": {"type": "int"},
    "vm_uuid": {"type": "str"},
    "state_dir": {"type": "path", "default": "/var/lib/ironclaw"},
    "tcti": {"type": "str"},
    "backend": {"type": "str", "default": "tpm2", "choices": ["tpm2", "software"]},
    "lock_timeout": {"type": "float", "default": 120},
    "cluster": {"type": "str", "default": "default"},
    "vm_ctime": {"type": "int"},
    "node_name": {"type": "str"},
    "controller_dir": {"type": "path", "default": "~/.local/share/ironclaw"},
    "keys": {"type": "int", "default": 1, "no_log": False},
    "threshold": {"type": "int", "default": 1},
    "rotate": {"type": "bool", "default": False},
    "create": {"type": "bool", "default": True},
    "root_expires_days": {"type": "int", "default": 365},
    "statement": {"type": "dict"},
    "chain": {"type": "list", "elements": "dict"},
    "policy": {"type": "raw"},
    "provision": {"type": "bool", "default": False},
    "vm_uuids": {"type": "list", "elements": "str"},
    "signing": {"type": "str", "default": "online", "choices": ["online", "offline"]},
    "sign_dir": {"type": "path"},
    "allow_pending": {"type": "bool", "default": False},
    "confirm": {"type": "list", "elements": "str"},
    "answer": {"type": "str"},
    "shown": {"type": "list", "elements": "str"},
    "expires_days": {"type": "int", "default": 90},
    "max_days": {"type": "int", "default": 90},
    "resign_days": {"type": "int", "default": 30},
    "store_dir": {"type": "path"},
    "envelope": {"type": "dict"},
    "receipt": {"type": "dict"},
    "trust_roots": {"type": "list", "elements": "dict"},
    "floor": {"type": "dict"},
    "unseal": {"type": "bool", "default": True},
    "cache": {"type": "bool", "default": True},
    "warn_days": {"type": "int", "default": 14},
    "now": {"type": "str"},
    "migration": {"type": "dict"},
    "node_record": {"type": "dict"},
    "node_facts": {"type": "dict"},
    "replace": {"type": "bool", "default": False},
    "head": {"type": "dict"},
}


# What each node or store state needs, checked by AnsibleModule before the module runs (the states' own checks stay
# for callers in process).
REQUIRED_IF = [
    ("state", "built", ("vmid", "vm_uuid", "node_name")),
    ("state", "stored", ("store_dir",)),
    ("state", "listed", ("store_dir",)),
    ("state", "verified", ("vmid", "vm_uuid")),
    ("state", "pinned", ("trust_roots",)),
]


def clock(now: str | None) -> datetime:
    """The clock, read once; `now` injects one."""
    if now:
        return canonical.parse_timestamp(now, "now")
    return datetime.now(UTC).replace(microsecond=0)


def _need(p: dict, *names: str) -> None:
    missing = [n for n in names if p.get(n) is None]
    if missing:
        raise InputError(f"state={p['state']} needs {', '.join(missing)}")


def built(p: dict, _check_mode: bool) -> dict:
    _need(p, "vmid", "vm_uuid", "node_name")
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


def stored(p: dict, check_mode: bool) -> dict:
    """Add what is given to the store; return what it now holds (``view``), its head before this call
    and the keys of what this call put or found already there (``touched``): the controller signs the
    next head from them. ``head`` alone writes a head the controller signed."""
    _need(p, "store_dir")
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
    _need(p, "store_dir")
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


def verified(p: dict, check_mode: bool, module) -> dict:
    _need(p, "vmid", "vm_uuid")
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
            module.warn(
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


def run_state(module) -> dict:
    p = module.params
    state = p["state"]
    if state in CONTROLLER_STATES:
        raise InputError(
            f"state={state} runs on the controller through the collection's action plugin; "
            "call the module by its full name ironclaw.sealed.ironclaw_manifest"
        )
    if state == "verified":
        return verified(p, module.check_mode, module)
    return {"built": built, "stored": stored, "listed": listed, "pinned": pinned}[state](p, module.check_mode)
