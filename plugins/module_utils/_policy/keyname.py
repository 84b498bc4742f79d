# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-VM ECDSA P-256 policy key in TPM wire form (TPM2B_PUBLIC) and its TPM name.

Computed without tpm2-pytss so the controller and the software backend share
one definition; unit tests check it against tpm2-pytss and a real TPM.
"""

from __future__ import annotations

import hashlib
import struct

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import ec

ALG_ECC = 0x0023
ALG_SHA256 = 0x000B
ALG_NULL = 0x0010
ECC_NIST_P256 = 0x0003
# TPMA_OBJECT userWithAuth | sign: a verification-only public key.
POLICY_KEY_ATTRIBUTES = 0x00000040 | 0x00040000
NAME_SIZE = 34


def name_of_public_area(public_area: bytes) -> bytes:
    """TPM name: nameAlg (SHA-256) || SHA-256(TPMT_PUBLIC)."""
    return struct.pack(">H", ALG_SHA256) + hashlib.sha256(public_area).digest()


def policy_key_public(key: ec.EllipticCurvePublicKey) -> bytes:
    """Marshaled TPM2B_PUBLIC of a P-256 public key, scheme NULL (the signature names ECDSA)."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise FormatError(f"policy keys are ECDSA P-256, got curve {key.curve.name}")
    nums = key.public_numbers()
    area = struct.pack(">HHIH", ALG_ECC, ALG_SHA256, POLICY_KEY_ATTRIBUTES, 0)
    area += struct.pack(">HHHH", ALG_NULL, ALG_NULL, ECC_NIST_P256, ALG_NULL)
    area += struct.pack(">H", 32) + nums.x.to_bytes(32, "big") + struct.pack(">H", 32) + nums.y.to_bytes(32, "big")
    return struct.pack(">H", len(area)) + area


def parse_policy_key_public(data: bytes, what: str = "policy key") -> tuple[ec.EllipticCurvePublicKey, bytes]:
    """Strictly parse what policy_key_public() makes; returns (key, TPM name)."""
    expected_len = 2 + 2 + 2 + 4 + 2 + 8 + 2 + 32 + 2 + 32
    if len(data) != expected_len:
        raise FormatError(f"{what}: expected a {expected_len}-byte TPM2B_PUBLIC, found {len(data)} bytes")
    (size,) = struct.unpack(">H", data[:2])
    area = data[2:]
    header = struct.pack(">HHIH", ALG_ECC, ALG_SHA256, POLICY_KEY_ATTRIBUTES, 0) + struct.pack(
        ">HHHH", ALG_NULL, ALG_NULL, ECC_NIST_P256, ALG_NULL
    )
    if size != len(area) or not area.startswith(header):
        raise FormatError(f"{what}: not an ECDSA P-256 policy key in the expected TPM form")
    rest = area[len(header) :]
    if rest[0:2] != b"\x00\x20" or rest[34:36] != b"\x00\x20":
        raise FormatError(f"{what}: point coordinates must be 32 bytes each")
    x = int.from_bytes(rest[2:34], "big")
    y = int.from_bytes(rest[36:68], "big")
    try:
        key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except ValueError as exc:
        raise FormatError(f"{what}: the point is not on P-256") from exc
    return key, name_of_public_area(area)
