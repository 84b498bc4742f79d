# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""TPM2_MakeCredential in software, on the controller (TPM 2.0 Part 1 §24, Part 3 §12.6).

A seed is encrypted to the EK (RSA-OAEP with label "IDENTITY\\0", or ECDH with
an ephemeral key and KDFe for an ECC EK); from it KDFa derives an AES key that
encrypts the secret and an HMAC key that binds the ciphertext to one object
name. Only the TPM holding that EK's private key can recover the seed, and it
releases the secret only if an object with exactly that name is loaded: the
controller learns that the object lives in the same TPM as the EK.

tpm2_pytss.utils.make_credential does the same, but the controller has no
tpm2-pytss (it needs the tss2 C libraries); tests check one against the other
through a real TPM.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct

from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.tpm_public import (
    ALG_AES,
    ALG_CFB,
    ALG_RSA,
    CURVES,
    PublicArea,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import (
    CFB,
    Cipher,
    algorithms,
    ec,
    hashes,
    padding,
)

IDENTITY_LABEL = b"IDENTITY\x00"


def kdfa(hash_name: str, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa (Part 1 §11.4.10.2): SP 800-108 counter mode with HMAC; label without its NUL (added here)."""
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        data = struct.pack(">I", counter) + label + b"\x00" + context_u + context_v + struct.pack(">I", bits)
        out += hmac.new(key, data, hash_name).digest()
        counter += 1
    return out[: bits // 8]


def kdfe(hash_name: str, z: bytes, use: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    """KDFe (Part 1 §11.4.10.3): SP 800-56A concatenation KDF; ``use`` includes its NUL."""
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += hashlib.new(hash_name, struct.pack(">I", counter) + z + use + party_u + party_v).digest()
        counter += 1
    return out[: bits // 8]


def _hash(hash_name: str):
    return getattr(hashes, hash_name.upper())()


def _seed(ek: PublicArea) -> tuple[bytes, bytes]:
    """(seed, encrypted seed as the TPM2B_ENCRYPTED_SECRET's contents)."""
    size = hashlib.new(ek.hash_name).digest_size
    if ek.type == ALG_RSA:
        seed = secrets.token_bytes(size)
        oaep = padding.OAEP(mgf=padding.MGF1(_hash(ek.hash_name)), algorithm=_hash(ek.hash_name), label=IDENTITY_LABEL)
        return seed, ek.key().encrypt(seed, oaep)
    key = ek.key()
    coord = CURVES[ek.curve][1]
    ephemeral = ec.generate_private_key(key.curve)
    nums = ephemeral.public_key().public_numbers()
    ex, ey = nums.x.to_bytes(coord, "big"), nums.y.to_bytes(coord, "big")
    z = ephemeral.exchange(ec.ECDH(), key)
    ek_x = key.public_numbers().x.to_bytes(coord, "big")
    seed = kdfe(ek.hash_name, z, IDENTITY_LABEL, ex, ek_x, size * 8)
    return seed, struct.pack(">H", coord) + ex + struct.pack(">H", coord) + ey


def make_credential(ek: PublicArea, secret: bytes, object_name: bytes) -> tuple[bytes, bytes]:
    """Marshaled (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET) for TPM2_ActivateCredential.

    ``ek`` must be a restricted decryption key with AES-CFB (every TCG EK template is).
    """
    if ek.sym_alg != ALG_AES or ek.sym_mode != ALG_CFB:
        raise FormatError("the EK's symmetric algorithm is not AES-CFB: not a TCG EK template")
    digest_size = hashlib.new(ek.hash_name).digest_size
    if not 0 < len(secret) <= digest_size:
        raise FormatError(f"a credential secret holds 1 to {digest_size} bytes, got {len(secret)}")
    seed, encrypted_seed = _seed(ek)
    sym_key = kdfa(ek.hash_name, seed, b"STORAGE", object_name, b"", ek.sym_bits)
    plain = struct.pack(">H", len(secret)) + secret  # TPM2B_DIGEST
    encryptor = Cipher(algorithms.AES(sym_key), CFB(b"\x00" * 16)).encryptor()
    enc_identity = encryptor.update(plain) + encryptor.finalize()
    hmac_key = kdfa(ek.hash_name, seed, b"INTEGRITY", b"", b"", digest_size * 8)
    outer = hmac.new(hmac_key, enc_identity + object_name, ek.hash_name).digest()
    id_object = struct.pack(">H", len(outer)) + outer + enc_identity
    return struct.pack(">H", len(id_object)) + id_object, struct.pack(">H", len(encrypted_seed)) + encrypted_seed
