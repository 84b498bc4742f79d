# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HKDF-SHA256 (RFC 5869)."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import HKDF, hashes


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """Extract-and-expand length bytes from ikm; an empty salt means HashLen zero bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)
