# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The software backend for nodes without a TPM: a node KEK file instead of an SRK.

Chosen explicitly (backend: software), never as a fallback. Layout under
`<state_dir>/node/` (0700): `software.json` (KEK version = epoch, X25519
enrollment public key), `kek-<version>.key` (32 bytes, 0600), `enrollment.key`
(X25519 private, 0600, for migrations to this node).
"""

from __future__ import annotations

import glob
import hashlib
import os
import struct

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import BackendError, InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    remove_file,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import X25519PrivateKey, serialization
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.facts import NodeFacts

FORMAT = "ironclaw-software-node/1"
KEK_SIZE = 32


def software_node_name(enrollment_public: bytes) -> bytes:
    """34 bytes, shaped like a TPM name so approvals use the same policy digest."""
    return struct.pack(">H", 0x000B) + hashlib.sha256(FORMAT.encode() + b"|" + enrollment_public).digest()


def software_epoch_name(node_name: bytes) -> bytes:
    return struct.pack(">H", 0x000B) + hashlib.sha256(b"ironclaw-software-epoch/1|" + node_name).digest()


class SoftwareNode:
    backend = "software"

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.dir = os.path.join(state_dir, "node")
        self._doc = None

    def close(self) -> None:
        self._doc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- node document -----------------------------------------------------
    @property
    def _doc_path(self) -> str:
        return os.path.join(self.dir, "software.json")

    def _kek_path(self, version: int) -> str:
        return os.path.join(self.dir, f"kek-{version}.key")

    def _load(self, required: bool = True) -> dict | None:
        if self._doc is None:
            try:
                data = read_regular(self._doc_path, "software node state", 4096)
            except FileNotFoundError:
                if required:
                    raise BackendError(
                        f"no software node state in {self.dir}: the node is not enrolled with backend software; "
                        "run the enroll playbook (ironclaw_node state=present backend=software)"
                    ) from None
                return None
            doc = canonical.loads(data, "software node state")
            canonical.require_fields(
                doc, {"format": str, "kek_version": int, "enrollment_public": str}, "software node state"
            )
            if doc["format"] != FORMAT:
                raise BackendError(f"software node state has format {doc['format']!r}, expected {FORMAT!r}")
            doc["enrollment_public"] = canonical.b64decode(doc["enrollment_public"], "enrollment public key", 32)
            self._doc = doc
        return self._doc

    def _write_doc(self, kek_version: int, enrollment_public: bytes) -> None:
        doc = {
            "format": FORMAT,
            "kek_version": kek_version,
            "enrollment_public": canonical.b64encode(enrollment_public),
        }
        write_atomic(self._doc_path, canonical.dumps(doc))
        self._doc = None

    def kek(self, version: int) -> bytes:
        try:
            data = read_regular(self._kek_path(version), f"node KEK version {version}", KEK_SIZE)
        except FileNotFoundError:
            raise BackendError(
                f"node KEK version {version} is gone from {self.dir}: keyslots wrapped under it were revoked "
                "(epoch bump) and cannot be opened on this node"
            ) from None
        if len(data) != KEK_SIZE:
            raise BackendError(f"node KEK version {version} has {len(data)} bytes, expected {KEK_SIZE}")
        return data

    def identity(self) -> tuple[bytes, bytes]:
        name = software_node_name(self._load()["enrollment_public"])
        return name, software_epoch_name(name)

    def epoch(self) -> int:
        return self._load()["kek_version"]

    # -- provisioning --------------------------------------------------------
    def plan_provision(self) -> list[str]:
        doc = self._load(required=False)
        if doc is None:
            return [f"create the software node state (KEK version 1, X25519 enrollment key) in {self.dir}"]
        if not os.path.exists(self._kek_path(doc["kek_version"])):
            raise BackendError(
                f"software node state in {self.dir} names KEK version {doc['kek_version']}, which is missing"
            )
        return []

    def provision(self) -> list[str]:
        plan = self.plan_provision()
        if not plan:
            return []
        if os.path.isdir(self.state_dir) and os.path.islink(self.state_dir):
            raise InputError(f"state_dir {self.state_dir} is a symlink; refusing to use it")
        ensure_dir(self.dir)
        enrollment = X25519PrivateKey.generate()
        raw_private = enrollment.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        raw_public = enrollment.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        write_atomic(os.path.join(self.dir, "enrollment.key"), raw_private)
        write_atomic(self._kek_path(1), os.urandom(KEK_SIZE))
        self._write_doc(1, raw_public)
        return plan

    # -- epoch ---------------------------------------------------------------
    def bump_epoch(self, rewrap) -> int:
        """New KEK version; `rewrap(old_kek, old_version, new_kek, new_version)` moves surviving keyslots;
        then the old KEK is erased, which kills every copy still wrapped under it."""
        doc = self._load()
        old, new = doc["kek_version"], doc["kek_version"] + 1
        if not os.path.exists(self._kek_path(new)):
            write_atomic(self._kek_path(new), os.urandom(KEK_SIZE))
        rewrap(self.kek(old), old, self.kek(new), new)
        self._write_doc(new, doc["enrollment_public"])
        for path in glob.glob(os.path.join(self.dir, "kek-*.key")):
            if path != self._kek_path(new):
                remove_file(path)
        return new

    # -- facts -----------------------------------------------------------------
    def facts(self, pcrs=None) -> NodeFacts:
        if pcrs is not None:
            raise InputError("the software backend has no PCRs; remove 'pcrs' from the policy or use backend tpm2")
        doc = self._load(required=False)
        facts = NodeFacts(backend=self.backend, provisioned=doc is not None)
        if doc is None:
            facts.missing.append("software node state")
            return facts
        facts.node_name, facts.epoch_nv_name = self.identity()
        facts.node_public = doc["enrollment_public"]
        facts.epoch = doc["kek_version"]
        return facts
