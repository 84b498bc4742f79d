# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_manifest's controller states (trusted, signed, requests) and the controller's checks of the store host's
answers (A5, A6) and of node records (A4): in process here, with the keys that never leave the controller; the
action plugins of manifest, provision and migration call them."""

from __future__ import annotations

from datetime import datetime, timedelta

from ansible_collections.ironclaw.sealed.plugins.module_utils._authority import head as authority_head
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority import rules, signing
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.journal import MoveJournal
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.ledger import VmLedger, controller_roots
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.node_record import (
    verified_record,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    FormatError,
    InputError,
    LifetimeError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, requests
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.issue import next_manifest
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.keystore import TrustKeyStore
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import (
    MANIFEST_PAYLOAD_TYPE,
    check_statement,
    with_policy,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import (
    load_chain,
    new_root,
    rotate,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.head import parse_view
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import (
    NODE_PAYLOAD_TYPE,
    OLD_NODE_RECORD_FORMAT,
)

MODULE = "ironclaw.sealed.ironclaw_manifest"


def _roots_result(roots) -> dict:
    return {"trust_roots": [dsse.envelope_to_dict(env) for env in roots]}


def _signing_keys(store: TrustKeyStore, now: datetime):
    """This controller's keys, checked against its current trust root."""
    roots = store.roots()
    if not roots:
        raise InputError(f"no trust root in {store.roots_dir}: run the init playbook first (ironclaw.sealed.init)")
    root = load_chain(roots, now)
    keys = [k for k in store.load_keys() if dsse.keyid_of(dsse.raw_public(k)) in root.keys]
    if len(keys) < root.threshold:
        raise InputError(
            f"this machine holds {len(keys)} of the {root.threshold} manifest-signing keys trust root version "
            f"{root.version} requires ({store.keys_dir}); sign where the keys are (ironclaw_signing: offline)"
        )
    return keys


def trusted(args: dict, check_mode: bool) -> dict:
    now = clock(args["now"])
    store = TrustKeyStore(args["controller_dir"])
    roots = store.roots()
    expires = now + timedelta(days=args["root_expires_days"])
    changed = False
    if not roots:
        if not args["create"]:
            raise InputError(
                f"no trust root in {store.roots_dir}: run the init playbook, or with offline signing copy the "
                "offline machine's trust/root-*.json files there"
            )
        if args["threshold"] < 1 or args["threshold"] > args["keys"]:
            raise InputError(f"threshold {args['threshold']} must be between 1 and the number of keys ({args['keys']})")
        if check_mode:
            return {"changed": True, "trust_roots": [], "msg": "would create the trust root"}
        keys = store.create_keys(args["keys"])
        head_key = store.create_head_key()
        envelope = new_root(keys, args["threshold"], issued_at=now, expires=expires, head_keys=[head_key])
        store.save_root(envelope, dsse.envelope_to_bytes(envelope))
        roots, changed = [envelope], True
    elif args["rotate"]:
        if check_mode:
            return {"changed": True, **_roots_result(roots), "msg": "would rotate the trust root"}
        old_keys = _signing_keys(store, now)
        new_keys = store.create_keys(args["keys"])
        envelope = rotate(roots[-1], old_keys, new_keys, args["threshold"], issued_at=now, expires=expires)
        store.save_root(envelope, dsse.envelope_to_bytes(envelope))
        store.retire(old_keys)
        roots, changed = [*roots, envelope], True
    root = load_chain(roots, now)
    if args["signing"] == "online" and not check_mode:
        _signing_keys(store, now)  # usable here: present, 0600, enough for the threshold
    return {
        "changed": changed,
        **_roots_result(roots),
        "trust_root": {
            "version": root.version,
            "threshold": root.threshold,
            "keyids": sorted(root.keys),
            "head_keyids": sorted(root.head_keys),
            "expires": canonical.utc_timestamp(root.expires),
        },
    }


def sign_confirmed(args: dict, check_mode: bool) -> dict:
    """On the offline machine: the confirmed pending requests of sign_dir, and only those (A10)."""
    if check_mode:
        return {"changed": False, "signed": [], "msg": "check mode: nothing signed"}
    done = requests.sign_confirmed(
        args["sign_dir"],
        _signing_keys(TrustKeyStore(args["controller_dir"]), clock(args["now"])),
        confirm=args["confirm"],
        answer=args["answer"],
        shown=args["shown"],
        max_days=args["max_days"],
    )
    out = [{"path": r.signed_path, "digest": r.digest, "summary": r.summary} for r in done]
    if not done:
        return {"changed": False, "signed": [], "msg": "nothing confirmed, nothing signed"}
    return {
        "changed": True,
        "signed": out,
        "msg": f"signed {len(done)} request(s): " + ", ".join(r.digest for r in done),
    }


def signed(args: dict, check_mode: bool) -> dict:
    if args["statement"] is None:
        if not args["sign_dir"]:
            raise InputError(
                "state=signed needs statement (from state=built), or on the offline machine sign_dir (the requests)"
            )
        return sign_confirmed(args, check_mode)
    now = clock(args["now"])
    store = TrustKeyStore(args["controller_dir"])
    signing.check_max_days(args["max_days"])
    if args["chain"] is None:
        raise InputError("state=signed needs chain: the VM's chain from the store (the chain result of state=listed)")
    # The node describes its files; the controller decides, from the VM's verified ledger, whether it may sign
    # that description and which policy it records (module_utils/_authority/rules.py).
    statement = check_statement(
        {k: v for k, v in args["statement"].items() if k != "policy"}, "statement to sign", with_policy=False
    )
    vm_uuid = statement["subject"]["vm_uuid"]
    ledger = VmLedger.verify(vm_uuid, args["chain"], controller_roots(args["controller_dir"], now))
    policy = rules.manifest_policy(
        ledger,
        statement,
        now=now,
        provision=rules.requested_policy(args["provision"], args["policy"]),
        move=MoveJournal(args["controller_dir"]).get(vm_uuid),
    )
    previous = ledger.newest_envelope
    manifest, reason = next_manifest(
        with_policy(statement, policy),
        previous,
        now=now,
        expires_days=args["expires_days"],
        resign_days=args["resign_days"],
    )
    if manifest is None:
        return {"changed": False, "envelope": dsse.envelope_to_dict(previous), "reason": reason}
    what = f"manifest version {manifest.version} of VM {manifest.subject.vmid}"
    signing.check_lifetime(manifest.issued_at, manifest.expires, args["max_days"], what)
    out = {"changed": True, "version": manifest.version, "reason": reason}
    if check_mode:
        return {**out, "envelope": None}
    if args["signing"] == "offline":
        if not args["sign_dir"]:
            raise InputError("ironclaw_signing offline needs sign_dir: where signing requests are exchanged")
        envelope, path = requests.exchange(args["sign_dir"], manifest)
        if envelope is None and args["allow_pending"]:
            digest = requests.read_request(path).digest
            return {**out, "changed": False, "envelope": None, "pending": {"path": path, "digest": digest}}
        if envelope is None:
            raise InputError(
                f"signing request written to {path} (VM {manifest.subject.vmid}, version {manifest.version}, "
                f"digest {requests.read_request(path).digest}). "
                "Carry the directory to the offline machine, run: ansible-playbook ironclaw.sealed.sign "
                f"-e ironclaw_sign_dir={args['sign_dir']} there, bring it back and re-run this playbook"
            )
        return {**out, "envelope": dsse.envelope_to_dict(envelope), "signed_by": "offline", "pending": None}
    envelope = dsse.sign(manifest.to_bytes(), MANIFEST_PAYLOAD_TYPE, _signing_keys(store, now))
    return {**out, "envelope": dsse.envelope_to_dict(envelope), "signed_by": "controller"}


def pending(args: dict, _check_mode: bool) -> dict:
    max_days = signing.check_max_days(args["max_days"])
    listed = []
    for request in requests.pending_requests(args["sign_dir"]):
        item = {**request.listed(), "refused": None}
        if request.kind == "manifest":
            try:
                signing.check_lifetime(request.document.issued_at, request.document.expires, max_days, "this request")
            except LifetimeError as err:
                item["refused"] = str(err)
        listed.append(item)
    return {"changed": False, "requests": listed}


def controller_root(controller_dir: str, now: datetime):
    """This controller's own trust root: the only one the store is checked against."""
    store = TrustKeyStore(controller_dir)
    roots = store.roots()
    if not roots:
        raise InputError(f"no trust root in {store.roots_dir}: run the init playbook first (ironclaw.sealed.init)")
    return load_chain(roots, now), roots


def _head_keys(controller_dir: str, root) -> list:
    store = TrustKeyStore(controller_dir)
    return store.load_head_keys() if root.head_keys else store.load_keys()


def checked_listing(listing: dict, controller_dir: str, now: datetime):
    """(root, the store module's listing) once the controller accepts the store (A5), with this controller's
    trust roots in place of the store's copies (A6); raises otherwise."""
    root, roots = controller_root(controller_dir, now)
    authority_head.check_store_view(
        listing["head"], root, authority_head.known_version(controller_dir), parse_view(listing["view"], "store view")
    )
    return root, {**listing, "trust_roots": [dsse.envelope_to_dict(env) for env in roots]}


def signed_head_after(result: dict, controller_dir: str, now: datetime, write_head) -> dict:
    """After the store module changed the store: sign the next head, have it written, remember it."""
    root, _roots = controller_root(controller_dir, now)
    known = authority_head.known_version(controller_dir)
    envelope = authority_head.next_head(
        result["head"],
        root,
        known,
        parse_view(result["view"], "store view"),
        result["touched"],
        _head_keys(controller_dir, root),
        now,
    )
    if envelope is None:
        return result
    written = write_head(dsse.envelope_to_dict(envelope))
    if written.get("failed"):
        raise VerificationError(f"the new store head was not written: {written.get('msg')}")
    authority_head.record_signed(controller_dir, envelope)
    return {**result, "head": dsse.envelope_to_dict(envelope), "changed": True}


def node_record_envelope(args: dict, record, now: datetime):
    """Sign a node record with the trust root (here, or through the request exchange when offline)."""
    if args["signing"] == "offline":
        if not args["sign_dir"]:
            raise InputError("ironclaw_signing offline needs sign_dir: where signing requests are exchanged")
        envelope, path = requests.exchange_node_record(args["sign_dir"], record)
        if envelope is None:
            raise InputError(
                f"signing request written to {path} (node record of {record.node}). Carry the directory to the "
                "offline machine, run: ansible-playbook ironclaw.sealed.sign "
                f"-e ironclaw_sign_dir={args['sign_dir']} there, bring it back and re-run this playbook"
            )
        return envelope
    return dsse.sign(record.to_bytes(), NODE_PAYLOAD_TYPE, _signing_keys(TrustKeyStore(args["controller_dir"]), now))


def current_record(doc, roots, node_name: str, replace: bool, now: datetime):
    """The node's enrolled record, or None; an old unsigned one, or (with replace) an invalid one, is replaced."""
    if doc is None or doc.get("format") == OLD_NODE_RECORD_FORMAT:
        return None
    try:
        return verified_record(doc, roots, node_name, now)
    except (FormatError, VerificationError):
        if replace:
            return None
        raise
