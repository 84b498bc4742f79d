# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Destruction receipts: a DSSE-signed statement of what was destroyed where, how, and what was not reached.

Key states follow NIST SP 800-57 Part 1 (§5.3): the VM's keys move from
active to deactivated (approvals revoked by the epoch bumps) to destroyed
(policy key and node files gone); each change carries its time.
"""

from __future__ import annotations

import hashlib
import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse

RECEIPT_FORMAT = "ironclaw-destruction-receipt/2"
RECEIPT_PAYLOAD_TYPE = "application/vnd.ironclaw.receipt.v1+json"
LOCATION_STATUSES = ("destroyed", "already-destroyed", "unreachable")
_FIELDS = {
    "format": str,
    "receipt_id": str,
    "issued_at": str,
    "vm": dict,
    "policy_key": dict,
    "tombstone": (dict, type(None)),
    "locations": list,
    "unreachable": list,
    "final": bool,
    "key_states": list,
    "erasure": str,
}


def build_receipt(
    *,
    vmid: int,
    vm_uuid: str,
    cluster: str,
    policy_key: dict,
    tombstone: dict | None,
    locations: list[dict],
    issued_at: str,
) -> dict:
    """The receipt document; `locations` are {node, status, evidence} with status in LOCATION_STATUSES,
    `tombstone` is tombstone_ref() of the manifest that ends the VM's chain (None before there is one)."""
    for location in locations:
        if location.get("status") not in LOCATION_STATUSES or not location.get("node"):
            raise InputError(f"a receipt location needs node and a status in {LOCATION_STATUSES}: {location!r}")
    unreachable = sorted(loc["node"] for loc in locations if loc["status"] == "unreachable")
    destroyed_times = sorted(
        loc["evidence"]["destroyed_at"] for loc in locations if loc["status"] != "unreachable" and loc.get("evidence")
    )
    states = [{"state": "active", "until": destroyed_times[0] if destroyed_times else issued_at}]
    if destroyed_times:
        states.append({"state": "deactivated", "at": destroyed_times[0], "by": "epoch bump on every reached node"})
    if policy_key.get("destroyed_at") and not unreachable:
        states.append({"state": "destroyed", "at": max([policy_key["destroyed_at"], *destroyed_times])})
    return {
        "format": RECEIPT_FORMAT,
        "receipt_id": os.urandom(16).hex(),
        "issued_at": issued_at,
        "vm": {"vmid": validate.vmid(vmid), "vm_uuid": validate.vm_uuid(vm_uuid), "cluster": cluster},
        "policy_key": policy_key,
        "tombstone": tombstone,
        "locations": sorted(locations, key=lambda loc: loc["node"]),
        "unreachable": unreachable,
        "final": not unreachable,
        "key_states": states,
        "erasure": "cryptographic: files were unlinked, which is not physical erasure on SSD, copy-on-write "
        "storage or Ceph; copies stay unusable because their approvals were revoked and the keys that could "
        "authorize new ones were destroyed",
    }


def parse_receipt(data: bytes, what: str) -> dict:
    """A receipt document from its payload bytes (format checked; strict canonical JSON)."""
    document = canonical.loads(data, what)
    canonical.require_format(document, RECEIPT_FORMAT, what)
    canonical.require_fields(document, _FIELDS, what)
    canonical.hex_bytes(document["receipt_id"], f"{what}: field 'receipt_id'", 16)
    canonical.timestamp_field(document["issued_at"], what, "issued_at")
    return document


def tombstone_ref(manifest, payload: bytes) -> dict:
    """How a receipt names the tombstone that ends the VM's chain: its version and the SHA-256 of its payload.
    The payload, not the envelope: with offline signing the receipt is requested before the tombstone comes
    back signed, and the payload is what the signatures cover."""
    return {"version": manifest.version, "payload_sha256": hashlib.sha256(payload).hexdigest()}


def adds_to(current: dict, newest: dict | None) -> bool:
    """Whether this run's receipt document tells more than `newest`, the newest receipt already issued (stored,
    or waiting for its offline signature): something was destroyed in this run, the key was destroyed now, a
    node it did not list or listed as unreachable has been dealt with since, or the chain's end differs.
    A re-run that only finds everything already destroyed (or the same nodes still unreachable) adds nothing."""
    if newest is None:
        return True
    if current["policy_key"].get("status") == "destroyed" or current["tombstone"] != newest.get("tombstone"):
        return True
    before = {location["node"]: location["status"] for location in newest.get("locations", [])}
    for location in current["locations"]:
        status, was = location["status"], before.get(location["node"])
        if was is None or status == "destroyed":
            return True
        if status == "already-destroyed" and was == "unreachable":
            return True
    return False


def sign_receipt(document: dict, private_keys) -> dsse.Envelope:
    return dsse.sign(canonical.dumps(document), RECEIPT_PAYLOAD_TYPE, private_keys)


def verify_receipt(envelope: dsse.Envelope, root) -> dict:
    """The receipt document if a threshold of the trust root signed it."""
    data = dsse.verify_threshold(envelope, RECEIPT_PAYLOAD_TYPE, root.keys, root.threshold, "destruction receipt")
    return parse_receipt(data, "destruction receipt")
