# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""AES key wrap with padding (NIST SP 800-38F KWP, RFC 5649)."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, VerificationError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

KEK_LENGTHS = (16, 24, 32)


def _check_kek(kek: bytes) -> None:
    if len(kek) not in KEK_LENGTHS:
        raise InputError(f"AES-KWP needs a key-encryption key of 16, 24 or 32 bytes, found {len(kek)} bytes")


def wrap(kek: bytes, key: bytes) -> bytes:
    """Wrap key (1 byte or more) under kek; the output is 8 to 15 bytes longer."""
    _check_kek(kek)
    if not key:
        raise InputError("AES-KWP: the key to wrap is empty; expected at least 1 byte")
    return aes_key_wrap_with_padding(kek, key)


def unwrap(kek: bytes, wrapped: bytes, what: str) -> bytes:
    """Unwrap; VerificationError if the integrity check fails (wrong KEK, altered or truncated data)."""
    _check_kek(kek)
    # cryptography 38 raises ValueError instead of InvalidUnwrap for some lengths: check them here.
    if len(wrapped) < 16 or len(wrapped) % 8:
        raise VerificationError(
            f"{what} failed to unwrap: expected a multiple of 8 bytes, at least 16, found {len(wrapped)} bytes; "
            "the wrapped key was truncated or altered, restore an intact copy"
        )
    try:
        return aes_key_unwrap_with_padding(kek, wrapped)
    except InvalidUnwrap:
        raise VerificationError(
            f"{what} failed to unwrap: the integrity check did not pass (wrong key-encryption key, "
            "or the wrapped key was altered); check that this node's KEK version matches the keyslot"
        ) from None
