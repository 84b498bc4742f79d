# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""AES-256-GCM with a 96-bit nonce and a 128-bit tag appended to the ciphertext."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, VerificationError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import AESGCM, InvalidTag

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16


def _check_sizes(key: bytes, nonce: bytes) -> None:
    if len(key) != KEY_LEN or len(nonce) != NONCE_LEN:
        raise InputError(
            f"AES-256-GCM needs a {KEY_LEN}-byte key and a {NONCE_LEN}-byte nonce, "
            f"found {len(key)} and {len(nonce)} bytes"
        )


def seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate; returns ciphertext || tag. Never reuse a nonce under one key."""
    _check_sizes(key, nonce)
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def open_(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes, what: str) -> bytes:
    """Check the tag and decrypt ciphertext || tag; VerificationError if anything was changed."""
    _check_sizes(key, nonce)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise VerificationError(
            f"{what} failed authentication: it was tampered with, truncated or not sealed for this VM "
            "(or with another root key); restore an intact copy and check its manifest"
        ) from None
