# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Air-gapped signing: requests out to the offline machine, signed envelopes back.

`<sign_dir>/<vm_uuid>-v<version>.request.json` holds the exact payload bytes to
sign and a summary a person can check (VM, version, node, blob names and
hashes); `<...>.signed.json` is the DSSE envelope the offline machine returns.
Nothing secret is in either. Node records (A4) go the same way as
`<sign_dir>/node-<node>.node-request.json` and `<...>.node-signed.json`.
"""

from __future__ import annotations

import glob
import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    remove_file,
    write_atomic,
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

REQUEST_FORMAT = "ironclaw-signing-request/1"
NODE_REQUEST = ".node-request.json"
NODE_SIGNED = ".node-signed.json"
_FIELDS = {"format": str, "payload_type": str, "payload": str, "summary": dict}


def summary_of(manifest: Manifest) -> dict:
    return {
        "vmid": manifest.subject.vmid,
        "vm_uuid": manifest.subject.vm_uuid,
        "version": manifest.version,
        "state": manifest.state,
        "node": manifest.node.name,
        "keyslot_sha256": manifest.keyslot.sha256 if manifest.keyslot else None,
        "blobs": [{"name": b.name, "sha256": b.sha256} for b in manifest.blobs],
        "expires": manifest.expires,
    }


def _paths(sign_dir: str, manifest: Manifest) -> tuple[str, str]:
    stem = os.path.join(sign_dir, f"{manifest.subject.vm_uuid}-v{manifest.version}")
    return stem + ".request.json", stem + ".signed.json"


def read_request(path: str) -> tuple[Manifest, bytes]:
    doc = canonical.loads(read_regular(path, "signing request", 1 << 20), path)
    canonical.require_fields(doc, _FIELDS, path)
    canonical.require_format(doc, REQUEST_FORMAT, path)
    if doc["payload_type"] != MANIFEST_PAYLOAD_TYPE:
        raise FormatError(f"{path}: payload_type {canonical.show(doc['payload_type'])} is not a manifest")
    payload = canonical.b64decode(doc["payload"], f"{path}: payload")
    manifest = parse_manifest(payload, f"{path}: payload")
    if doc["summary"] != summary_of(manifest):
        raise FormatError(f"{path}: the summary does not describe the payload; the request was altered")
    return manifest, payload


def exchange(sign_dir: str, manifest: Manifest) -> tuple[dsse.Envelope | None, str]:
    """The signed envelope for this VM's next version if the offline machine returned one, else
    (None, path of the request to sign). A pending request for the same version and the same
    sealed state is kept (its payload is what gets signed); a stale one is replaced."""
    ensure_dir(sign_dir, 0o700)
    request_path, signed_path = _paths(sign_dir, manifest)
    if os.path.exists(request_path):
        pending, payload = read_request(request_path)
        if statement_of(pending) == statement_of(manifest) and pending.prev == manifest.prev:
            if os.path.exists(signed_path):
                envelope = dsse.parse_envelope(read_regular(signed_path, "signed manifest"), signed_path)
                if envelope.payload != payload or envelope.payload_type != MANIFEST_PAYLOAD_TYPE:
                    raise FormatError(f"{signed_path} does not sign the payload of {request_path}")
                return envelope, signed_path
            return None, request_path
        remove_file(signed_path)
    payload = manifest.to_bytes()
    doc = {
        "format": REQUEST_FORMAT,
        "payload_type": MANIFEST_PAYLOAD_TYPE,
        "payload": canonical.b64encode(payload),
        "summary": summary_of(manifest),
    }
    write_atomic(request_path, canonical.dumps(doc), 0o644)
    return None, request_path


def node_summary_of(record: NodeRecord) -> dict:
    """Every field of a node record: the signer checks the node's SRK against what it enrolled."""
    return {"node_record": record.to_dict()}


def read_node_request(path: str) -> tuple[NodeRecord, bytes]:
    doc = canonical.loads(read_regular(path, "signing request", 1 << 20), path)
    canonical.require_fields(doc, _FIELDS, path)
    canonical.require_format(doc, REQUEST_FORMAT, path)
    if doc["payload_type"] != NODE_PAYLOAD_TYPE:
        raise FormatError(f"{path}: payload_type {canonical.show(doc['payload_type'])} is not a node record")
    payload = canonical.b64decode(doc["payload"], f"{path}: payload")
    record = parse_node_record(payload, f"{path}: payload")
    if doc["summary"] != node_summary_of(record):
        raise FormatError(f"{path}: the summary does not describe the payload; the request was altered")
    return record, payload


def exchange_node_record(sign_dir: str, record: NodeRecord) -> tuple[dsse.Envelope | None, str]:
    """Like exchange, for a node record: the signed envelope if it came back, else the request's path.
    A pending request for the same node, SRK and epoch counter is kept (its enrolled_at is what gets signed)."""
    ensure_dir(sign_dir, 0o700)
    stem = os.path.join(sign_dir, f"node-{record.node}")
    request_path, signed_path = stem + NODE_REQUEST, stem + NODE_SIGNED
    if os.path.exists(request_path):
        pending, payload = read_node_request(request_path)
        if {**pending.__dict__, "enrolled_at": None} == {**record.__dict__, "enrolled_at": None}:
            if os.path.exists(signed_path):
                envelope = dsse.parse_envelope(read_regular(signed_path, "signed node record"), signed_path)
                if envelope.payload != payload or envelope.payload_type != NODE_PAYLOAD_TYPE:
                    raise FormatError(f"{signed_path} does not sign the payload of {request_path}")
                return envelope, signed_path
            return None, request_path
        remove_file(signed_path)
    doc = {
        "format": REQUEST_FORMAT,
        "payload_type": NODE_PAYLOAD_TYPE,
        "payload": canonical.b64encode(record.to_bytes()),
        "summary": node_summary_of(record),
    }
    write_atomic(request_path, canonical.dumps(doc), 0o644)
    return None, request_path


def _sign_node_request(path: str, private_keys) -> tuple[str, dict]:
    record, payload = read_node_request(path)
    signed = path[: -len(NODE_REQUEST)] + NODE_SIGNED
    write_atomic(signed, dsse.envelope_to_bytes(dsse.sign(payload, NODE_PAYLOAD_TYPE, private_keys)), 0o644)
    return signed, node_summary_of(record)


def pending_requests(sign_dir: str) -> list[dict]:
    if not os.path.isdir(sign_dir):
        raise InputError(f"signing directory {sign_dir} does not exist")
    out = []
    for path in sorted(glob.glob(os.path.join(sign_dir, "*" + NODE_REQUEST))):
        if not os.path.exists(path[: -len(NODE_REQUEST)] + NODE_SIGNED):
            out.append({"path": path, "summary": node_summary_of(read_node_request(path)[0])})
    for path in sorted(glob.glob(os.path.join(sign_dir, "*.request.json"))):
        signed = path[: -len(".request.json")] + ".signed.json"
        if os.path.exists(signed):
            continue
        manifest, _payload = read_request(path)
        out.append({"path": path, "summary": summary_of(manifest)})
    return out


def sign_request(path: str, private_keys) -> tuple[str, dict]:
    if path.endswith(NODE_REQUEST):
        return _sign_node_request(path, private_keys)
    if not path.endswith(".request.json"):
        raise InputError(f"{path} is not a signing request (*.request.json)")
    manifest, payload = read_request(path)
    envelope = dsse.sign(payload, MANIFEST_PAYLOAD_TYPE, private_keys)
    signed = path[: -len(".request.json")] + ".signed.json"
    write_atomic(signed, dsse.envelope_to_bytes(envelope), 0o644)
    return signed, summary_of(manifest)
