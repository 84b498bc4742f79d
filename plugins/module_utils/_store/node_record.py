# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node record: what the controller enrolled for one node (its SRK or software key, its epoch counter).

Stored as ``<store>/nodes/<node>.json``: a DSSE envelope of type
``application/vnd.ironclaw.node.v1+json`` over ``ironclaw-node-record/2``,
signed by the trust root. Format 1 (plain, unsigned JSON) is refused: the store
host could swap it. Whether a record is valid for a node is decided on the
controller (_authority/node_record.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import check_node_name

NODE_RECORD_FORMAT = "ironclaw-node-record/2"
OLD_NODE_RECORD_FORMAT = "ironclaw-node-record/1"
NODE_PAYLOAD_TYPE = "application/vnd.ironclaw.node.v1+json"
BACKENDS = ("tpm2", "software")
MAX_PUBLIC = 4096
_NV_INDEX = re.compile(r"0x[0-9a-f]{8}")
_FIELDS = {
    "format": str,
    "node": str,
    "backend": str,
    "srk_name": str,
    "srk_public": str,
    "epoch_nv_index": (str, type(None)),
    "epoch_nv_name": (str, type(None)),
    "enrolled_at": str,
}


def reenroll_message(what: str) -> str:
    return (
        f"{what} is an unsigned {OLD_NODE_RECORD_FORMAT} record: node records are now signed by the trust root; "
        "re-enroll the node (playbook ironclaw.sealed.enroll)"
    )


@dataclass(frozen=True)
class NodeRecord:
    node: str
    backend: str
    srk_name: str  # hex: the TPM name of the SRK, or the software enrollment key's id
    srk_public: str  # base64: TPM2B_PUBLIC of the SRK, or the software enrollment public key
    epoch_nv_index: str | None  # "0x01c10000" on tpm2
    epoch_nv_name: str | None  # hex
    enrolled_at: str

    def to_dict(self) -> dict:
        """The record as roles and the policy signer read it (the keys of format 1, plus enrolled_at)."""
        return {"format": NODE_RECORD_FORMAT, **self.__dict__}

    def to_bytes(self) -> bytes:
        data = canonical.dumps(self.to_dict())
        parse_node_record(data, "new node record")
        return data


def parse_node_record(data: bytes, what: str) -> NodeRecord:
    """The record payload, strictly (its signature is checked by the caller first)."""
    doc = canonical.loads(data, what)
    if doc.get("format") == OLD_NODE_RECORD_FORMAT:
        raise FormatError(reenroll_message(what))
    canonical.require_format(doc, NODE_RECORD_FORMAT, what)
    canonical.require_fields(doc, _FIELDS, what)
    canonical.checked(check_node_name, doc["node"], what, "node")
    if doc["backend"] not in BACKENDS:
        raise FormatError(f"{what}: field 'backend' must be one of {', '.join(BACKENDS)}, found {doc['backend']!r}")
    canonical.hex_bytes(doc["srk_name"], f"{what}: field 'srk_name'")
    public = canonical.b64decode(doc["srk_public"], f"{what}: field 'srk_public'")
    if not 0 < len(public) <= MAX_PUBLIC:
        raise FormatError(f"{what}: field 'srk_public' must hold 1 to {MAX_PUBLIC} bytes, found {len(public)}")
    if doc["epoch_nv_index"] is not None and not _NV_INDEX.fullmatch(doc["epoch_nv_index"]):
        raise FormatError(f"{what}: field 'epoch_nv_index' must be written as 0x followed by 8 lower-case hex digits")
    if doc["epoch_nv_name"] is not None:
        canonical.hex_bytes(doc["epoch_nv_name"], f"{what}: field 'epoch_nv_name'")
    canonical.timestamp_field(doc["enrolled_at"], what, "enrolled_at")
    return NodeRecord(**{name: doc[name] for name in _FIELDS if name != "format"})
