# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node record: what the controller enrolled for one node (its SRK or software key, its epoch counter, and for
a TPM the evidence of its attestation proof, DESIGN §8).

Stored as ``<store>/nodes/<node>.json``: a DSSE envelope of type
``application/vnd.ironclaw.node.v1+json`` over ``ironclaw-node-record/3``,
signed by the trust root. Format 3 adds ``attestation``: the proof's public
evidence (trust mode, EK hash and chain fingerprints, SRK and AK) on tpm2, null
on the software backend (no TPM to attest). Format 2 records (enrolled before
attestation) still parse, with no attestation: they are never migration or
recovery targets unless tofu targets are allowed. Format 1 (plain, unsigned
JSON) is refused: the store host could swap it. Whether a record is valid for a
node is decided on the controller (_authority/node_record.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import check_node_name

NODE_RECORD_FORMAT = "ironclaw-node-record/3"
PRE_ATTESTATION_FORMAT = "ironclaw-node-record/2"
OLD_NODE_RECORD_FORMAT = "ironclaw-node-record/1"
TRUST_MODES = ("ca", "pin", "tofu")
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
_ATTESTATION_FIELDS = {
    "trust": str,
    "ek_type": str,
    "ek_public_sha256": str,
    "ek_chain": list,
    "srk_name": str,
    "srk_public": str,
    "ak_name": str,
    "ak_public": str,
    "attested_at": str,
}
_PIN = re.compile(r"sha256:[0-9a-f]{64}")
MAX_CHAIN = 8


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
    attestation: dict | None = None  # the attestation proof's evidence (tpm2, format 3); None otherwise

    @property
    def trust(self) -> str | None:
        """How the EK was trusted at enrollment (ca, pin, tofu); None if never attested (software, format 2)."""
        return None if self.attestation is None else self.attestation["trust"]

    def comparable(self) -> dict:
        """What must differ for a new record to be signed (or a pending request replaced): not the times of
        enrollment or attestation, which every run of the proof renews."""
        attestation = None if self.attestation is None else {**self.attestation, "attested_at": None}
        return {**self.__dict__, "enrolled_at": None, "attestation": attestation}

    def to_dict(self) -> dict:
        """The record as roles and the policy signer read it (the keys of format 1, enrolled_at, attestation)."""
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
    if doc.get("format") == PRE_ATTESTATION_FORMAT:
        canonical.require_fields(doc, _FIELDS, what)
        doc = {**doc, "attestation": None}
    else:
        canonical.require_format(doc, NODE_RECORD_FORMAT, what)
        canonical.require_fields(doc, {**_FIELDS, "attestation": (dict, type(None))}, what)
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
    if doc["attestation"] is not None:
        _check_attestation(doc["attestation"], doc, what)
    elif doc["backend"] == "tpm2" and doc["format"] == NODE_RECORD_FORMAT:
        raise FormatError(f"{what}: a tpm2 node record carries its attestation evidence (field 'attestation')")
    fields = [name for name in _FIELDS if name != "format"]
    return NodeRecord(**{name: doc[name] for name in fields}, attestation=doc["attestation"])


def _check_attestation(att: dict, doc: dict, what: str) -> None:
    """The evidence of a tpm2 record: its SRK is the record's; no software record carries one."""
    canonical.require_fields(att, _ATTESTATION_FIELDS, what, "attestation.")
    if doc["backend"] != "tpm2":
        raise FormatError(f"{what}: a {doc['backend']} node has no TPM, so its record carries no attestation")
    if att["trust"] not in TRUST_MODES:
        raise FormatError(f"{what}: field 'attestation.trust' must be one of {', '.join(TRUST_MODES)}")
    if not _PIN.fullmatch(att["ek_public_sha256"]):
        raise FormatError(f"{what}: field 'attestation.ek_public_sha256' must be sha256: and 64 lower-case hex digits")
    chain = att["ek_chain"]
    if len(chain) > MAX_CHAIN or not all(isinstance(c, str) and _PIN.fullmatch(c) for c in chain):
        raise FormatError(f"{what}: field 'attestation.ek_chain' must list at most {MAX_CHAIN} sha256: fingerprints")
    if (att["trust"] == "ca") != bool(chain):
        raise FormatError(f"{what}: field 'attestation.ek_chain' is filled exactly when the trust mode is ca")
    if att["srk_name"] != doc["srk_name"]:
        raise FormatError(f"{what}: the attested SRK ({att['srk_name'][:20]}…) is not the record's SRK")
    for key in ("srk_public", "ak_public"):
        public = canonical.b64decode(att[key], f"{what}: field 'attestation.{key}'")
        if not 0 < len(public) <= MAX_PUBLIC:
            raise FormatError(f"{what}: field 'attestation.{key}' must hold 1 to {MAX_PUBLIC} bytes")
    if att["srk_public"] != doc["srk_public"]:
        raise FormatError(f"{what}: the attested SRK public is not the record's")
    canonical.tpm_name(att["ak_name"], f"{what}: field 'attestation.ak_name'")
    canonical.timestamp_field(att["attested_at"], what, "attestation.attested_at")
