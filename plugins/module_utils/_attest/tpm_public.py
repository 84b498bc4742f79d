# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""TPM public areas (TPM2B_PUBLIC / TPMT_PUBLIC, TPM 2.0 Part 2 §12.2) parsed on the controller.

The controller has no tpm2-pytss: this strict parser covers the RSA and ECC
keys attestation meets (EK, SRK, AK) and refuses anything else, trailing bytes
included. The TPM name is nameAlg || H_nameAlg(TPMT_PUBLIC).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import ec, rsa

ALG_RSA = 0x0001
ALG_ECC = 0x0023
ALG_AES = 0x0006
ALG_CFB = 0x0043
ALG_NULL = 0x0010
ALG_RSAES = 0x0015
ALG_ECDAA = 0x001A
HASHES = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}
CURVES = {0x0003: ("P-256", 32), 0x0004: ("P-384", 48), 0x0005: ("P-521", 66)}
_EC_CURVES = {"P-256": "SECP256R1", "P-384": "SECP384R1", "P-521": "SECP521R1"}

# TPMA_OBJECT bits (Part 2 §8.3)
FIXED_TPM = 1 << 1
FIXED_PARENT = 1 << 4
SENSITIVE_DATA_ORIGIN = 1 << 5
USER_WITH_AUTH = 1 << 6
ADMIN_WITH_POLICY = 1 << 7
RESTRICTED = 1 << 16
DECRYPT = 1 << 17
SIGN = 1 << 18
ATTRIBUTE_NAMES = {
    FIXED_TPM: "fixedTPM",
    FIXED_PARENT: "fixedParent",
    SENSITIVE_DATA_ORIGIN: "sensitiveDataOrigin",
    USER_WITH_AUTH: "userWithAuth",
    ADMIN_WITH_POLICY: "adminWithPolicy",
    RESTRICTED: "restricted",
    DECRYPT: "decrypt",
    SIGN: "sign",
}


@dataclass(frozen=True)
class PublicArea:
    """The fields of a TPMT_PUBLIC attestation needs, plus its exact bytes."""

    raw: bytes  # the TPMT_PUBLIC bytes (what the name hashes)
    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    sym_alg: int  # ALG_NULL for signing keys
    sym_bits: int
    sym_mode: int
    scheme: int
    scheme_hash: int | None
    rsa_bits: int | None = None
    rsa_exponent: int | None = None
    curve: int | None = None
    unique: bytes = b""  # RSA modulus
    x: bytes = b""
    y: bytes = b""

    @property
    def hash_name(self) -> str:
        return HASHES[self.name_alg]

    @property
    def name(self) -> bytes:
        return struct.pack(">H", self.name_alg) + hashlib.new(self.hash_name, self.raw).digest()

    def has(self, bits: int) -> bool:
        return self.attributes & bits == bits

    def missing_attributes(self, bits: int) -> list[str]:
        return [label for bit, label in ATTRIBUTE_NAMES.items() if bits & bit and not self.attributes & bit]

    def key(self):
        """The public key as a cryptography object."""
        if self.type == ALG_RSA:
            return rsa.RSAPublicNumbers(self.rsa_exponent, int.from_bytes(self.unique, "big")).public_key()
        curve = getattr(ec, _EC_CURVES[CURVES[self.curve][0]])()
        try:
            return ec.EllipticCurvePublicNumbers(
                int.from_bytes(self.x, "big"), int.from_bytes(self.y, "big"), curve
            ).public_key()
        except ValueError as exc:
            raise FormatError("the ECC point of the public area is not on its curve") from exc

    def describe(self) -> str:
        if self.type == ALG_RSA:
            return f"RSA-{self.rsa_bits}"
        return f"ECC {CURVES[self.curve][0]}"


class _Reader:
    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise FormatError(f"{self.what}: truncated TPM structure")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def tpm2b(self) -> bytes:
        return self.take(self.u16())

    def end(self) -> None:
        if self.pos != len(self.data):
            raise FormatError(f"{self.what}: {len(self.data) - self.pos} trailing bytes")


def parse_tpm2b_public(data: bytes, what: str) -> PublicArea:
    """Parse a marshaled TPM2B_PUBLIC (size-prefixed), refusing any byte it does not account for."""
    outer = _Reader(bytes(data), what)
    area = outer.tpm2b()
    outer.end()
    return parse_tpmt_public(area, what)


def parse_tpmt_public(area: bytes, what: str) -> PublicArea:
    r = _Reader(area, what)
    typ, name_alg, attributes = r.u16(), r.u16(), r.u32()
    if name_alg not in HASHES:
        raise FormatError(f"{what}: unsupported name algorithm 0x{name_alg:04x}")
    if typ not in (ALG_RSA, ALG_ECC):
        raise FormatError(f"{what}: only RSA and ECC keys are supported, found type 0x{typ:04x}")
    auth_policy = r.tpm2b()
    sym_alg = r.u16()
    sym_bits = sym_mode = 0
    if sym_alg != ALG_NULL:
        sym_bits, sym_mode = r.u16(), r.u16()
    scheme = r.u16()
    scheme_hash = None
    if scheme not in (ALG_NULL, ALG_RSAES):
        scheme_hash = r.u16()
        if scheme == ALG_ECDAA:
            r.u16()  # count
    fields = {}
    if typ == ALG_RSA:
        fields["rsa_bits"] = r.u16()
        fields["rsa_exponent"] = r.u32() or 65537
        fields["unique"] = r.tpm2b()
        if len(fields["unique"]) * 8 != fields["rsa_bits"]:
            raise FormatError(f"{what}: RSA modulus of {len(fields['unique'])} bytes for {fields['rsa_bits']} bits")
    else:
        curve = r.u16()
        if curve not in CURVES:
            raise FormatError(f"{what}: unsupported ECC curve 0x{curve:04x}")
        kdf = r.u16()
        if kdf != ALG_NULL:
            r.u16()
        fields["curve"] = curve
        fields["x"], fields["y"] = r.tpm2b(), r.tpm2b()
        size = CURVES[curve][1]
        if len(fields["x"]) > size or len(fields["y"]) > size:
            raise FormatError(f"{what}: ECC point coordinates longer than the curve")
    r.end()
    return PublicArea(
        raw=bytes(area),
        type=typ,
        name_alg=name_alg,
        attributes=attributes,
        auth_policy=auth_policy,
        sym_alg=sym_alg,
        sym_bits=sym_bits,
        sym_mode=sym_mode,
        scheme=scheme,
        scheme_hash=scheme_hash,
        **fields,
    )
