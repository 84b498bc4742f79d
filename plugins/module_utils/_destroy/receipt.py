# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Destruction receipts: a DSSE-signed statement of what was destroyed where, how, and what was not reached.

Key states follow NIST SP 800-57 Part 1 (§5.3): the VM's keys move from
active to deactivated (approvals revoked by the epoch bumps) to destroyed
(policy key and node files gone); each change carries its time.
"""

from __future__ import annotations

import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse

RECEIPT_FORMAT = "ironclaw-destruction-receipt/1"
RECEIPT_PAYLOAD_TYPE = "application/vnd.ironclaw.receipt.v1+json"
LOCATION_STATUSES = ("destroyed", "already-destroyed", "unreachable")


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
    """The receipt document; `locations` are {node, status, evidence} with status in LOCATION_STATUSES."""
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


def sign_receipt(document: dict, private_keys) -> dsse.Envelope:
    return dsse.sign(canonical.dumps(document), RECEIPT_PAYLOAD_TYPE, private_keys)


def verify_receipt(envelope: dsse.Envelope, root) -> dict:
    """The receipt document if a threshold of the trust root signed it."""
    data = dsse.verify_threshold(envelope, RECEIPT_PAYLOAD_TYPE, root.keys, root.threshold, "destruction receipt")
    document = canonical.loads(data, "destruction receipt")
    canonical.require_format(document, RECEIPT_FORMAT, "destruction receipt")
    return document
