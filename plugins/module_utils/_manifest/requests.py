# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Air-gapped signing: requests out to the offline machine, signed envelopes back.

Every document the trust root signs while ``ironclaw_signing`` is ``offline`` goes through this one exchange:

- manifests (tombstones included): ``<sign_dir>/<vm_uuid>-v<version>.request.json``;
- destruction receipts: ``<sign_dir>/<vm_uuid>-receipt-<receipt_id>.request.json``;
- node records (A4): ``<sign_dir>/node-<node>.request.json``.

A request holds the exact payload bytes to sign and their summary (every field, and the request digest:
SHA-256 of the payload, see _authority/signing.py); ``<...>.signed.json`` is the DSSE envelope the offline
machine returns. Nothing secret is in either.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._authority import signing
from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    remove_file,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.receipt import (
    RECEIPT_PAYLOAD_TYPE,
    parse_receipt,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import (
    MANIFEST_PAYLOAD_TYPE,
    Manifest,
    parse_manifest,
    statement_of,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import (
    NODE_PAYLOAD_TYPE,
    NodeRecord,
    parse_node_record,
)

REQUEST_FORMAT = "ironclaw-signing-request/2"
REQUEST_SUFFIX = ".request.json"
SIGNED_SUFFIX = ".signed.json"
_FIELDS = {"format": str, "payload_type": str, "payload": str, "summary": dict}


@dataclass(frozen=True)
class Request:
    """A parsed request: `document` is the Manifest, the receipt's dict or the NodeRecord."""

    path: str
    payload_type: str
    payload: bytes
    document: object
    summary: dict

    @property
    def digest(self) -> str:
        return self.summary["digest"]

    @property
    def kind(self) -> str:
        return self.summary["kind"]

    @property
    def signed_path(self) -> str:
        return self.path[: -len(REQUEST_SUFFIX)] + SIGNED_SUFFIX

    def listed(self) -> dict:
        return {
            "path": self.path,
            "digest": self.digest,
            "kind": self.kind,
            "headline": signing.headline(self.summary),
            "summary": self.summary,
        }


def _parse_payload(payload_type: str, payload: bytes, what: str) -> tuple[object, dict]:
    if payload_type == MANIFEST_PAYLOAD_TYPE:
        manifest = parse_manifest(payload, what)
        return manifest, signing.summary_of_manifest(manifest, payload)
    if payload_type == RECEIPT_PAYLOAD_TYPE:
        document = parse_receipt(payload, what)
        return document, signing.summary_of_receipt(document, payload)
    if payload_type == NODE_PAYLOAD_TYPE:
        record = parse_node_record(payload, what)
        return record, signing.summary_of_node_record(record, payload)
    raise FormatError(
        f"{what}: payload_type {canonical.show(payload_type)} is neither a manifest, a receipt nor a node record"
    )


def summary_of(manifest: Manifest) -> dict:
    return signing.summary_of_manifest(manifest, manifest.to_bytes())


def read_request(path: str) -> Request:
    doc = canonical.loads(read_regular(path, "signing request", 1 << 20), path)
    canonical.require_format(doc, REQUEST_FORMAT, path)
    canonical.require_fields(doc, _FIELDS, path)
    payload = canonical.b64decode(doc["payload"], f"{path}: payload")
    document, summary = _parse_payload(doc["payload_type"], payload, f"{path}: payload")
    if doc["summary"] != summary:
        raise FormatError(f"{path}: the summary does not describe the payload; the request was altered")
    return Request(path, doc["payload_type"], payload, document, summary)


def _write_request(path: str, payload_type: str, payload: bytes) -> Request:
    _document, summary = _parse_payload(payload_type, payload, "new signing request")
    doc = {
        "format": REQUEST_FORMAT,
        "payload_type": payload_type,
        "payload": canonical.b64encode(payload),
        "summary": summary,
    }
    write_atomic(path, canonical.dumps(doc), 0o644)
    return read_request(path)


def _returned(request: Request) -> dsse.Envelope | None:
    """The envelope the offline machine returned for `request`, if any; it must sign exactly its payload."""
    if not os.path.exists(request.signed_path):
        return None
    envelope = dsse.parse_envelope(read_regular(request.signed_path, "signed request"), request.signed_path)
    if envelope.payload != request.payload or envelope.payload_type != request.payload_type:
        raise FormatError(f"{request.signed_path} does not sign the payload of {request.path}")
    return envelope


def _manifest_path(sign_dir: str, manifest: Manifest) -> str:
    return os.path.join(sign_dir, f"{manifest.subject.vm_uuid}-v{manifest.version}{REQUEST_SUFFIX}")


def exchange(sign_dir: str, manifest: Manifest) -> tuple[dsse.Envelope | None, str]:
    """The signed envelope for this VM's next version if the offline machine returned one, else
    (None, path of the request to sign). A pending request for the same version and the same
    sealed state is kept (its payload is what gets signed); a stale one is replaced."""
    ensure_dir(sign_dir, 0o700)
    request_path = _manifest_path(sign_dir, manifest)
    if os.path.exists(request_path):
        pending = read_request(request_path)
        if pending.payload_type != MANIFEST_PAYLOAD_TYPE:
            raise FormatError(f"{request_path} is not a manifest request")
        if statement_of(pending.document) == statement_of(manifest) and pending.document.prev == manifest.prev:
            envelope = _returned(pending)
            return (envelope, pending.signed_path) if envelope is not None else (None, request_path)
        remove_file(pending.signed_path)
    _write_request(request_path, MANIFEST_PAYLOAD_TYPE, manifest.to_bytes())
    return None, request_path


def exchange_node_record(sign_dir: str, record: NodeRecord) -> tuple[dsse.Envelope | None, str]:
    """Like exchange, for a node record: the signed envelope if it came back, else the request's path.
    A pending request for the same node, key, epoch counter and evidence is kept (its enrolled_at and attested_at are
    what gets signed)."""
    ensure_dir(sign_dir, 0o700)
    request_path = os.path.join(sign_dir, f"node-{record.node}{REQUEST_SUFFIX}")
    if os.path.exists(request_path):
        pending = read_request(request_path)
        if pending.payload_type != NODE_PAYLOAD_TYPE:
            raise FormatError(f"{request_path} is not a node record request")
        if pending.document.comparable() == record.comparable():
            envelope = _returned(pending)
            return (envelope, pending.signed_path) if envelope is not None else (None, request_path)
        remove_file(pending.signed_path)
    _write_request(request_path, NODE_PAYLOAD_TYPE, record.to_bytes())
    return None, request_path


def pending_manifest(sign_dir: str, vm_uuid: str, version: int) -> Request | None:
    """The request for version `version` of VM `vm_uuid`, if one waits in the exchange (signed or not)."""
    path = os.path.join(sign_dir, f"{validate.vm_uuid(vm_uuid)}-v{version}{REQUEST_SUFFIX}")
    if not os.path.exists(path):
        return None
    request = read_request(path)
    return request if request.payload_type == MANIFEST_PAYLOAD_TYPE else None


def request_receipt(sign_dir: str, document: dict) -> Request:
    """Write a request for a destruction receipt document."""
    ensure_dir(sign_dir, 0o700)
    vm_uuid = validate.vm_uuid(document["vm"]["vm_uuid"])
    path = os.path.join(sign_dir, f"{vm_uuid}-receipt-{document['receipt_id']}{REQUEST_SUFFIX}")
    return _write_request(path, RECEIPT_PAYLOAD_TYPE, canonical.dumps(document))


def receipt_requests(sign_dir: str, vm_uuid: str) -> list[tuple[Request, dsse.Envelope | None]]:
    """The VM's receipt requests in the exchange, oldest first, each with its returned envelope (or None)."""
    pattern = os.path.join(sign_dir, f"{validate.vm_uuid(vm_uuid)}-receipt-*{REQUEST_SUFFIX}")
    found = [read_request(path) for path in glob.glob(pattern)]
    found.sort(key=lambda request: (request.document["issued_at"], request.path))
    return [(request, _returned(request)) for request in found]


def pending_requests(sign_dir: str) -> list[Request]:
    """Every request the offline machine has not signed yet, in file name order."""
    if not os.path.isdir(sign_dir):
        raise InputError(f"signing directory {sign_dir} does not exist")
    out = []
    for path in sorted(glob.glob(os.path.join(sign_dir, "*" + REQUEST_SUFFIX))):
        request = read_request(path)
        if not os.path.exists(request.signed_path):
            out.append(request)
    return out


def sign_confirmed(
    sign_dir: str,
    private_keys,
    *,
    confirm: list[str] | None,
    answer: str | None,
    shown: list[str] | None,
    max_days: int,
) -> list[Request]:
    """On the offline machine: sign the pending requests the operator confirmed, after every check passed for
    all of them (an unconfirmable confirmation or a manifest living too long signs nothing at all)."""
    signing.check_max_days(max_days)
    pending = pending_requests(sign_dir)
    chosen = set(signing.confirmed_digests([r.digest for r in pending], confirm=confirm, answer=answer, shown=shown))
    to_sign = [request for request in pending if request.digest in chosen]
    for request in to_sign:
        if request.payload_type == MANIFEST_PAYLOAD_TYPE:
            manifest = request.document
            signing.check_lifetime(
                manifest.issued_at,
                manifest.expires,
                max_days,
                f"manifest version {manifest.version} of VM {manifest.subject.vmid} (request {request.digest[:16]})",
            )
    for request in to_sign:
        envelope = dsse.sign(request.payload, request.payload_type, private_keys)
        write_atomic(request.signed_path, dsse.envelope_to_bytes(envelope), 0o644)
    return to_sign
