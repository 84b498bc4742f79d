# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place that imports `cryptography`.

Modules report a missing library through `require()` with a clear message
(install python3-cryptography on the node) instead of a traceback; the rest of
module_utils imports the names from here.
"""

from __future__ import annotations

__all__ = [
    "AESGCM",
    "CFB",
    "Cipher",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "HKDF",
    "IMPORT_ERROR",
    "InvalidSignature",
    "InvalidTag",
    "InvalidUnwrap",
    "Prehashed",
    "X25519PrivateKey",
    "X25519PublicKey",
    "aes_key_unwrap_with_padding",
    "aes_key_wrap_with_padding",
    "algorithms",
    "decode_dss_signature",
    "ec",
    "encode_dss_signature",
    "hashes",
    "missing",
    "modes",
    "padding",
    "rsa",
    "serialization",
    "x509",
    "x509_verification",
]

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, InvalidTag
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature, encode_dss_signature
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from cryptography.hazmat.primitives.keywrap import (
        InvalidUnwrap,
        aes_key_unwrap_with_padding,
        aes_key_wrap_with_padding,
    )

    IMPORT_ERROR = None
except ImportError as exc:
    IMPORT_ERROR = exc
    hashes = serialization = ec = Prehashed = X25519PrivateKey = X25519PublicKey = AESGCM = HKDF = None
    x509 = padding = rsa = Cipher = algorithms = modes = None
    Ed25519PrivateKey = Ed25519PublicKey = None
    decode_dss_signature = encode_dss_signature = aes_key_wrap_with_padding = aes_key_unwrap_with_padding = None

    class InvalidSignature(Exception):
        """Never raised: cryptography is missing and require() stops first."""

    class InvalidTag(Exception):
        """Never raised: cryptography is missing and require() stops first."""

    class InvalidUnwrap(Exception):
        """Never raised: cryptography is missing and require() stops first."""


# AES-CFB (TPM credential and duplication wrappers) moved to cryptography's "decrepit" package in 47.
try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:
    CFB = modes.CFB if modes is not None else None

# The X.509 path verifier runs on the controller only: nodes have Debian's cryptography 38 (none) or 43 (one
# without extension policies). EK certificates carry no EKU, so the end-entity policy must be permissive, which
# needs ExtensionPolicy (cryptography 45 and later); with less this is None, and callers say so.
try:
    from cryptography.x509 import verification as x509_verification

    if not hasattr(x509_verification, "ExtensionPolicy"):
        x509_verification = None
except ImportError:
    x509_verification = None


def missing() -> str | None:
    """Why cryptography cannot be used here, or None."""
    if IMPORT_ERROR is None:
        return None
    return (
        "the Python library cryptography is missing for this interpreter (Debian: apt-get install "
        f"python3-cryptography; elsewhere: pip install cryptography): {IMPORT_ERROR}"
    )
