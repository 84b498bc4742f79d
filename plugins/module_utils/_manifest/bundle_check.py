# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A transfer bundle is checked on the target against the signed manifest it was exported from.

Rules 1-4 apply to that manifest as on any node (the node's cached trust roots and floor count); rule 5
compares the bundle's blobs with the manifest's SHA-256 list (the keyslot is re-bound by the transfer, so
only its id is compared).
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import VerificationError
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.cache import NodeCache
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.node_check import node_floor, trusted_root
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import (
    check_files,
    envelope_digest,
    verify_manifest,
)


def verify_bundle(
    state_dir: str, bundle, *, envelope, offered_roots: list, floor, cluster: str, vm_ctime, now: datetime
):
    """The manifest the bundle names, verified; raises VerificationError naming what differs."""
    cache = NodeCache(state_dir)
    manifest = verify_manifest(
        envelope,
        root=trusted_root(cache, offered_roots, now),
        now=now,
        floor=node_floor(cache, bundle.vmid, bundle.vm_uuid, floor),
        expected={"vmid": bundle.vmid, "vm_uuid": bundle.vm_uuid, "cluster": cluster, "vm_ctime": vm_ctime},
        actual=None,
    )
    digest = envelope_digest(envelope)
    if (manifest.version, digest) != (bundle.manifest_version, bundle.manifest_digest):
        raise VerificationError(
            f"the bundle was exported from manifest version {bundle.manifest_version} "
            f"({bundle.manifest_digest[:16]}…), but the store's newest for VM {bundle.vmid} is version "
            f"{manifest.version} ({digest[:16]}…): the VM changed since the export; re-run the migration"
        )
    check_files(
        manifest,
        {
            "keyslot": {"sha256": manifest.keyslot.sha256, "keyslot_id": bundle.keyslot_id},
            "blobs": [
                {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                for name, data in bundle.blobs
            ],
        },
    )
    return manifest
