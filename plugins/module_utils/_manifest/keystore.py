# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's (or the offline signer's) Ed25519 manifest-signing keys and trust-root copies.

Layout under the controller directory: `trust-keys/<keyid>.pem` (PKCS#8, 0600,
directory 0700), `head-keys/<keyid>.pem` (the online key that signs the store
head, named by the trust root; with offline signing the only key on the online
controller) and `trust/root-<version>.json` (the signed trust roots this
controller issued, newest last). Private keys never leave this directory.
"""

from __future__ import annotations

import glob
import os
import stat

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, PolicyError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import Ed25519PrivateKey, serialization
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.dsse import keyid_of, parse_envelope, raw_public
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import root_version


class TrustKeyStore:
    def __init__(self, controller_dir: str):
        self.controller_dir = os.path.expanduser(controller_dir)
        self.keys_dir = os.path.join(self.controller_dir, "trust-keys")
        self.roots_dir = os.path.join(self.controller_dir, "trust")
        self.head_keys_dir = os.path.join(self.controller_dir, "head-keys")

    # -- private keys ----------------------------------------------------------
    def key_paths(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.keys_dir, "*.pem")))

    def create_keys(self, count: int, directory: str | None = None) -> list:
        if count < 1:
            raise InputError(f"the trust root needs at least one signing key, asked for {count}")
        directory = directory or self.keys_dir
        ensure_dir(self.controller_dir, 0o700)
        ensure_dir(directory, 0o700)
        keys = []
        for _index in range(count):
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            write_atomic(os.path.join(directory, f"{keyid_of(raw_public(key))}.pem"), pem, 0o600, exclusive=True)
            keys.append(key)
        return keys

    def create_head_key(self):
        """A new online store-head key (one is enough: the head adds rollback protection, not authority)."""
        return self.create_keys(1, self.head_keys_dir)[0]

    def load_head_keys(self) -> list:
        """The store-head keys here (same file checks as the manifest-signing keys)."""
        return self.load_keys(self.head_keys_dir)

    def load_keys(self, directory: str | None = None) -> list:
        """Every signing key here; refuses a key file that others could read."""
        keys = []
        for path in sorted(glob.glob(os.path.join(directory or self.keys_dir, "*.pem"))):
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) or st.st_mode & 0o077 or st.st_uid != os.getuid():
                raise PolicyError(
                    f"manifest signing key {path} must be a regular file owned by you with mode 0600 "
                    f"(found mode {stat.S_IMODE(st.st_mode):04o}); fix it with chmod 600 before signing"
                )
            key = serialization.load_pem_private_key(read_regular(path, "manifest signing key", 16384), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise PolicyError(f"manifest signing key {path} is not an Ed25519 key")
            if os.path.basename(path) != f"{keyid_of(raw_public(key))}.pem":
                raise PolicyError(f"manifest signing key {path} is named for another key; restore the original file")
            keys.append(key)
        return keys

    def retire(self, keys) -> None:
        """Move keys out of use after a rotation (kept, renamed, never used to sign again)."""
        for key in keys:
            path = os.path.join(self.keys_dir, f"{keyid_of(raw_public(key))}.pem")
            if os.path.exists(path):
                os.replace(path, path[: -len(".pem")] + ".retired")

    # -- trust roots -------------------------------------------------------------
    def roots(self) -> list:
        """The trust-root envelopes this controller issued, oldest first."""
        found = []
        for path in sorted(glob.glob(os.path.join(self.roots_dir, "root-*.json"))):
            found.append(parse_envelope(read_regular(path, "trust root"), path))
        return found

    def save_root(self, envelope, data: bytes) -> str:
        ensure_dir(self.controller_dir, 0o700)
        ensure_dir(self.roots_dir, 0o700)
        path = os.path.join(self.roots_dir, f"root-{root_version(envelope):08d}.json")
        write_atomic(path, data, 0o600, exclusive=True)
        return path
