# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a node keeps to verify on its own (e.g. from a Proxmox pre-start hook): the trust roots it
accepted (`<state_dir>/trust/root-<version>.json`) and each VM's newest verified manifest
(`<state_dir>/<vmid>/manifest.json`), whose version is the node's floor for that VM.
Both only ever move forward."""

from __future__ import annotations

import glob
import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import root_version

MANIFEST_FILE = "manifest.json"


class NodeCache:
    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.trust_dir = os.path.join(state_dir, "trust")

    def roots(self) -> list:
        return [
            dsse.parse_envelope(read_regular(path, "cached trust root"), path)
            for path in sorted(glob.glob(os.path.join(self.trust_dir, "root-*.json")))
        ]

    def add_roots(self, envelopes) -> list[int]:
        """Write the roots this node does not have yet; returns their versions."""
        have = {root_version(env) for env in self.roots()}
        added = []
        for envelope in envelopes:
            version = root_version(envelope)
            if version in have:
                continue
            ensure_dir(self.state_dir, 0o700)
            ensure_dir(self.trust_dir, 0o700)
            write_atomic(os.path.join(self.trust_dir, f"root-{version:08d}.json"), dsse.envelope_to_bytes(envelope))
            added.append(version)
        return added

    def manifest_path(self, vmid: int) -> str:
        return os.path.join(self.state_dir, str(vmid), MANIFEST_FILE)

    def manifest(self, vmid: int):
        try:
            data = read_regular(self.manifest_path(vmid), f"VM {vmid} cached manifest")
        except FileNotFoundError:
            return None
        return dsse.parse_envelope(data, self.manifest_path(vmid))

    def save_manifest(self, vmid: int, envelope) -> bool:
        data = dsse.envelope_to_bytes(envelope)
        cached = self.manifest(vmid)
        if cached is not None and dsse.envelope_to_bytes(cached) == data:
            return False
        write_atomic(self.manifest_path(vmid), data)
        return True
