# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""DSSE v1 envelopes with Ed25519 signatures, verified m-of-n.

Each signature covers PAE(payloadType, payload), so the payload type cannot be
swapped under a valid signature. A key id is the SHA-256 (hex) of the raw
32-byte Ed25519 public key. The envelope's canonical JSON lists signatures
sorted by (keyid, sig), so one set of signatures has exactly one byte form and
its SHA-256 identifies the envelope.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    FormatError,
    InputError,
    ThresholdError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import (
    Ed25519PublicKey,
    InvalidSignature,
    serialization,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
MAX_SIGNATURES = 64
_KEYID = re.compile(r"[0-9a-f]{64}")
_FIELDS = {"payload": str, "payloadType": str, "signatures": list}
_SIGNATURE_FIELDS = {"keyid": str, "sig": str}


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding; lengths are byte lengths in ASCII decimal."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


def keyid_of(raw_public: bytes) -> str:
    """The key id of an Ed25519 public key: SHA-256 hex of its 32 raw bytes."""
    if not isinstance(raw_public, bytes) or len(raw_public) != PUBLIC_KEY_LEN:
        raise InputError(f"an Ed25519 public key is {PUBLIC_KEY_LEN} raw bytes")
    return hashlib.sha256(raw_public).hexdigest()


def raw_public(key) -> bytes:
    """The 32 raw bytes of an Ed25519 public key, given the private or the public key object."""
    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, order=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope; ``signatures`` is kept sorted, so equal sets compare equal."""

    payload: bytes
    payload_type: str
    signatures: tuple[Signature, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "signatures", tuple(sorted(self.signatures)))


def envelope_to_dict(envelope: Envelope) -> dict:
    return {
        "payload": canonical.b64encode(envelope.payload),
        "payloadType": envelope.payload_type,
        "signatures": [{"keyid": s.keyid, "sig": canonical.b64encode(s.sig)} for s in envelope.signatures],
    }


def envelope_to_bytes(envelope: Envelope) -> bytes:
    """Canonical JSON of the envelope: its one byte form, hashed for chains and fork checks."""
    return canonical.dumps(envelope_to_dict(envelope))


def parse_envelope(data: bytes | dict, what: str) -> Envelope:
    """Parse an envelope strictly: canonical bytes (from a file) or the same object already decoded."""
    doc = canonical.loads(data, what) if isinstance(data, (bytes, bytearray)) else data
    canonical.require_fields(doc, _FIELDS, what)
    if not doc["payloadType"]:
        raise FormatError(f"{what}: field 'payloadType' must not be empty")
    items = doc["signatures"]
    if not 1 <= len(items) <= MAX_SIGNATURES:
        raise FormatError(
            f"{what}: field 'signatures' must hold 1 to {MAX_SIGNATURES} signatures, found {len(items)}; "
            "sign the envelope before using it"
        )
    signatures = []
    for index, item in enumerate(items):
        field = f"signatures[{index}]"
        canonical.require_fields(item, _SIGNATURE_FIELDS, what, prefix=f"{field}.")
        if not _KEYID.fullmatch(item["keyid"]):
            raise FormatError(
                f"{what}: field '{field}.keyid' must be 64 lowercase hex characters (SHA-256 of the public key), "
                f"found {canonical.show(item['keyid'])}"
            )
        sig = canonical.b64decode(item["sig"], f"{what}: field '{field}.sig'", SIGNATURE_LEN)
        signatures.append(Signature(item["keyid"], sig))
    envelope = Envelope(
        payload=canonical.b64decode(doc["payload"], f"{what}: field 'payload'"),
        payload_type=doc["payloadType"],
        signatures=tuple(signatures),
    )
    if isinstance(data, (bytes, bytearray)) and envelope_to_bytes(envelope) != bytes(data):
        raise FormatError(
            f"{what}: envelope is not canonical (signatures must be sorted by keyid, then signature); "
            "re-create it with this collection or restore an intact copy"
        )
    return envelope


def sign(envelope_or_payload: Envelope | bytes, payload_type: str, private_keys: Iterable) -> Envelope:
    """Add a signature by each key that has not signed yet; a bytes payload starts a new envelope."""
    if isinstance(envelope_or_payload, Envelope):
        envelope = envelope_or_payload
        if envelope.payload_type != payload_type:
            raise InputError(
                f"refusing to sign: the envelope holds payloadType {canonical.show(envelope.payload_type)}, "
                f"expected '{payload_type}'"
            )
    else:
        envelope = Envelope(payload=bytes(envelope_or_payload), payload_type=payload_type)
    message = pae(payload_type, envelope.payload)
    signatures = list(envelope.signatures)
    signed = {s.keyid for s in signatures}
    for key in private_keys:
        keyid = keyid_of(raw_public(key))
        if keyid not in signed:
            # Ed25519 is deterministic: signing again would add the same signature.
            signatures.append(Signature(keyid, key.sign(message)))
            signed.add(keyid)
    return Envelope(payload=envelope.payload, payload_type=payload_type, signatures=tuple(signatures))


def _short(keyids: Iterable[str]) -> str:
    return "[" + ", ".join(k[:16] for k in sorted(keyids)) + "]"


def require_type(envelope: Envelope, expected_type: str, what: str) -> None:
    if envelope.payload_type != expected_type:
        raise VerificationError(
            f"{what}: payloadType is {canonical.show(envelope.payload_type)}, expected '{expected_type}': "
            "this envelope holds another kind of document"
        )


def verify_threshold(
    envelope: Envelope, expected_type: str, keys: dict[str, bytes], threshold: int, what: str
) -> bytes:
    """Return the payload if at least ``threshold`` distinct known keys signed it; else VerificationError.

    A key counts once however many signatures carry its key id; signatures by
    keys outside ``keys`` are ignored (and named when the threshold is not met).
    """
    require_type(envelope, expected_type, what)
    if threshold < 1:
        raise VerificationError(f"{what}: a signature threshold must be at least 1, found {threshold}")
    message = pae(envelope.payload_type, envelope.payload)
    valid: set[str] = set()
    invalid: set[str] = set()
    unknown: set[str] = set()
    for signature in envelope.signatures:
        public = keys.get(signature.keyid)
        if public is None:
            unknown.add(signature.keyid)
            continue
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(signature.sig, message)
        except InvalidSignature:
            invalid.add(signature.keyid)
        else:
            valid.add(signature.keyid)
    if len(valid) < threshold:
        raise ThresholdError(
            f"{what}: {len(valid)} of {threshold} required signatures: valid from {_short(valid)}; "
            f"unknown keys {_short(unknown)}; invalid {_short(invalid - valid)} "
            "(key ids shortened; each key counts once); the envelope was altered or not signed by enough "
            "keys of the trust root"
        )
    return envelope.payload
