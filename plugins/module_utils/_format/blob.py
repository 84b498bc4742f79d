# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sealed blob file ``<state_dir>/<vmid>/<name>.sealed``.

Layout::

    header_len (uint32, big-endian) || header (canonical JSON) || nonce (12) || ciphertext || tag (16)

Everything before the nonce is the GCM associated data, so no byte of the
header can change unnoticed. The key is derived per blob from the VM root key
(VRK): HKDF-SHA256(VRK, salt = blob_id, info = "<format>|<vmid>|<vm_uuid>|<name>").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    FormatError,
    InputError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto import aead
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.hkdf import hkdf_sha256
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical

BLOB_FORMAT = "ironclaw-sealed-blob/1"
CIPHER = "AES-256-GCM"
VRK_LEN = 32
BLOB_ID_LEN = 16
NONCE_LEN = aead.NONCE_LEN
TAG_LEN = aead.TAG_LEN
LEN_PREFIX = 4
MAX_HEADER_LEN = 4096
MAX_PLAINTEXT_LEN = 16 * 1024 * 1024
MAX_GENERATION = 2**63 - 1

_HEADER_FIELDS = {
    "format": str,
    "vmid": int,
    "vm_uuid": str,
    "name": str,
    "blob_id": str,
    "keyslot_id": str,
    "generation": int,
    "created": str,
    "cipher": str,
    "length": int,
}


@dataclass(frozen=True)
class BlobHeader:
    """The authenticated header of a sealed blob (``blob_id`` raw, ``created`` as written)."""

    vmid: int
    vm_uuid: str
    name: str
    blob_id: bytes
    keyslot_id: str
    generation: int
    created: str
    length: int

    def to_dict(self) -> dict:
        return {
            "format": BLOB_FORMAT,
            "vmid": self.vmid,
            "vm_uuid": self.vm_uuid,
            "name": self.name,
            "blob_id": canonical.b64encode(self.blob_id),
            "keyslot_id": self.keyslot_id,
            "generation": self.generation,
            "created": self.created,
            "cipher": CIPHER,
            "length": self.length,
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON of the header; refuses a header that parse_header would refuse."""
        data = canonical.dumps(self.to_dict())
        if parse_header(data, "new blob header") != self:
            raise FormatError("new blob header: does not survive a round trip; a field has the wrong type")
        return data


@dataclass(frozen=True)
class ParsedBlob:
    """A blob split into its parts; nothing is decrypted or authenticated yet."""

    header: BlobHeader
    nonce: bytes
    ciphertext: bytes  # ciphertext || tag
    aad: bytes  # header_len || header


def parse_header(data: bytes, what: str) -> BlobHeader:
    """Parse the header JSON strictly (format first, then exact fields, types and ranges)."""
    doc = canonical.loads(data, what)
    canonical.require_format(doc, BLOB_FORMAT, what)
    canonical.require_fields(doc, _HEADER_FIELDS, what)
    if doc["cipher"] != CIPHER:
        raise FormatError(
            f"{what}: field 'cipher' must be '{CIPHER}', found {canonical.show(doc['cipher'])}; "
            "upgrade ironclaw.sealed if a newer version wrote it"
        )
    return BlobHeader(
        vmid=canonical.checked(validate.vmid, doc["vmid"], what, "vmid"),
        vm_uuid=canonical.checked(validate.vm_uuid, doc["vm_uuid"], what, "vm_uuid"),
        name=canonical.checked(validate.secret_name, doc["name"], what, "name"),
        blob_id=canonical.b64decode(doc["blob_id"], f"{what}: field 'blob_id'", BLOB_ID_LEN),
        keyslot_id=canonical.checked(validate.keyslot_id, doc["keyslot_id"], what, "keyslot_id"),
        generation=canonical.int_field(doc["generation"], what, "generation", 1, MAX_GENERATION),
        created=canonical.timestamp_field(doc["created"], what, "created"),
        length=canonical.int_field(doc["length"], what, "length", 0, MAX_PLAINTEXT_LEN),
    )


def derive_blob_key(vrk: bytes, header: BlobHeader) -> bytes:
    """The blob's AES-256 key, bound to the VRK, the blob_id and the VM identity plus name."""
    if len(vrk) != VRK_LEN:
        raise InputError(f"VM root key must be {VRK_LEN} bytes, found {len(vrk)} bytes")
    info = f"{BLOB_FORMAT}|{header.vmid}|{header.vm_uuid}|{header.name}".encode()
    return hkdf_sha256(vrk, salt=header.blob_id, info=info, length=32)


def encrypt_blob(
    vrk: bytes,
    *,
    vmid: int,
    vm_uuid: str,
    name: str,
    keyslot_id: str,
    generation: int,
    plaintext: bytes,
    blob_id: bytes | None = None,
    nonce: bytes | None = None,
    created: str | None = None,
) -> bytes:
    """Seal ``plaintext`` into a complete blob file. blob_id and nonce are random unless given (tests only)."""
    if not isinstance(plaintext, bytes) or len(plaintext) > MAX_PLAINTEXT_LEN:
        size = len(plaintext) if isinstance(plaintext, bytes) else type(plaintext).__name__
        raise InputError(f"secret value must be bytes of at most {MAX_PLAINTEXT_LEN} bytes (16 MiB), found {size}")
    if isinstance(generation, bool) or not isinstance(generation, int) or not 1 <= generation <= MAX_GENERATION:
        raise InputError(
            f"generation must be an integer from 1 to {MAX_GENERATION}, found {canonical.show(generation)}"
        )
    blob_id = os.urandom(BLOB_ID_LEN) if blob_id is None else blob_id
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    if len(blob_id) != BLOB_ID_LEN or len(nonce) != NONCE_LEN:
        raise InputError(f"blob_id must be {BLOB_ID_LEN} bytes and nonce {NONCE_LEN} bytes")
    if created is None:
        created = canonical.utc_timestamp()
    else:
        try:
            canonical.parse_timestamp(created, "created")
        except FormatError as err:
            raise InputError(str(err)) from None
    header = BlobHeader(
        vmid=validate.vmid(vmid),
        vm_uuid=validate.vm_uuid(vm_uuid),
        name=validate.secret_name(name),
        blob_id=bytes(blob_id),
        keyslot_id=validate.keyslot_id(keyslot_id),
        generation=generation,
        created=created,
        length=len(plaintext),
    )
    # Every field is bounded: the header stays far below MAX_HEADER_LEN.
    header_bytes = header.to_bytes()
    aad = len(header_bytes).to_bytes(LEN_PREFIX, "big") + header_bytes
    return aad + nonce + aead.seal(derive_blob_key(vrk, header), nonce, plaintext, aad)


def parse_blob(data: bytes, what: str) -> ParsedBlob:
    """Split and strictly check a blob file; size is checked before anything is decrypted."""
    if not isinstance(data, (bytes, bytearray)):
        raise FormatError(f"{what}: expected bytes, found {type(data).__name__}")
    data = bytes(data)
    minimum = LEN_PREFIX + 2 + NONCE_LEN + TAG_LEN
    if len(data) < minimum:
        raise FormatError(
            f"{what}: truncated: expected at least {minimum} bytes, found {len(data)}; restore an intact copy"
        )
    header_len = int.from_bytes(data[:LEN_PREFIX], "big")
    if not 2 <= header_len <= MAX_HEADER_LEN:
        raise FormatError(
            f"{what}: header length must be from 2 to {MAX_HEADER_LEN} bytes, found {header_len}; "
            "this is not a sealed blob or it is damaged"
        )
    body_start = LEN_PREFIX + header_len
    if body_start + NONCE_LEN + TAG_LEN > len(data):
        raise FormatError(
            f"{what}: truncated: header length says {header_len} bytes but the file is only {len(data)} bytes; "
            "restore an intact copy"
        )
    header = parse_header(data[LEN_PREFIX:body_start], f"{what} header")
    expected = body_start + NONCE_LEN + header.length + TAG_LEN
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "trailing bytes"
        raise FormatError(
            f"{what}: {problem}: expected {expected} bytes for a {header.length}-byte secret, "
            f"found {len(data)} bytes; restore an intact copy"
        )
    return ParsedBlob(
        header=header,
        nonce=data[body_start : body_start + NONCE_LEN],
        ciphertext=data[body_start + NONCE_LEN :],
        aad=data[:body_start],
    )


def decrypt_blob(vrk: bytes, parsed: ParsedBlob, what: str) -> bytes:
    """Authenticate header and ciphertext under the VRK and return the plaintext."""
    return aead.open_(derive_blob_key(vrk, parsed.header), parsed.nonce, parsed.ciphertext, parsed.aad, what)


def check_blob_identity(header: BlobHeader, *, vmid: int, vm_uuid: str, name: str, keyslot_id: str, what: str) -> None:
    """Refuse a blob that belongs to another VM, another secret or another keyslot."""
    vmid = validate.vmid(vmid)
    vm_uuid = validate.vm_uuid(vm_uuid)
    name = validate.secret_name(name)
    keyslot_id = validate.keyslot_id(keyslot_id)
    if header.vmid != vmid or header.vm_uuid != vm_uuid:
        field = "vmid" if header.vmid != vmid else "vm_uuid"
        raise VerificationError(
            f"{what} belongs to VM {header.vmid} (uuid {header.vm_uuid}), not VM {vmid} (uuid {vm_uuid}) "
            f"({field} differs): a blob of another VM was placed in this VM's folder; "
            "remove it and restore this VM's own blob"
        )
    if header.name != name:
        raise VerificationError(
            f"{what} holds secret '{header.name}', not '{name}' (name differs): the file was renamed or swapped; "
            "restore the right blob under its own name"
        )
    if header.keyslot_id != keyslot_id:
        raise VerificationError(
            f"{what} was sealed under keyslot {header.keyslot_id}, but this VM's keyslot is {keyslot_id} "
            "(keyslot_id differs): the blob belongs to an older or another keyslot; "
            "restore the blob that matches the current keyslot, or the keyslot that matches the blob"
        )
