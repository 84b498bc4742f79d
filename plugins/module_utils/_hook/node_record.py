# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``<state_dir>/hook/node.json``: which node this is, as the hookscript's installer was told.

Canonical JSON ``{"format": "ironclaw-hook-node/1", "node_id": "<hex>"}``; the node id is the one
manifests record (the TPM name of the node's SRK, or the software backend's enrollment name). With
it, the pre-start hook refuses a VM directory copied whole from another node.
"""

from __future__ import annotations

import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import read_regular
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical

HOOK_DIR = "hook"
NODE_FILE = "node.json"
NODE_FORMAT = "ironclaw-hook-node/1"
_FIELDS = {"format": str, "node_id": str}


def node_record_path(state_dir: str) -> str:
    return os.path.join(state_dir, HOOK_DIR, NODE_FILE)


def check_node_id(value: object, what: str) -> str:
    """A node id in hex (34 bytes: 000b + SHA-256), returned lowercase."""
    if isinstance(value, str):
        value = value.lower()
    canonical.tpm_name(value, what)
    return value


def node_record_to_bytes(node_id: str) -> bytes:
    return canonical.dumps({"format": NODE_FORMAT, "node_id": check_node_id(node_id, "node id")})


def parse_node_record(data: bytes, what: str) -> str:
    doc = canonical.loads(data, what)
    canonical.require_format(doc, NODE_FORMAT, what)
    canonical.require_fields(doc, _FIELDS, what)
    canonical.tpm_name(doc["node_id"], f"{what}: field 'node_id'")
    return doc["node_id"]


def read_node_id(state_dir: str) -> str | None:
    """This node's id as recorded by the installer, or None when it recorded none."""
    path = node_record_path(state_dir)
    what = f"hookscript node record ({path})"
    try:
        data = read_regular(path, what)
    except FileNotFoundError:
        return None
    return parse_node_record(data, what)
