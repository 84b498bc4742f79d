# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where each guest is: ``pvesh get /cluster/resources --type vm --output-format json``.

A JSON array of objects (pve-manager PVE::API2::Cluster ``resources``); a guest
entry has ``id`` (``qemu/<vmid>`` or ``lxc/<vmid>``), ``type``, ``vmid``,
``node`` and ``status`` (``running``, ``stopped``, or ``unknown`` while the
node has not reported). Other entry types (node, storage, pool, sdn) are
skipped.
"""

from __future__ import annotations

import dataclasses
import json

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import ProxmoxError

GUEST_TYPES = ("qemu", "lxc")


@dataclasses.dataclass(frozen=True)
class Guest:
    vmid: int
    type: str
    node: str
    status: str
    name: str | None = None


def parse_cluster_resources(text: str) -> list:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ProxmoxError(f"pvesh get /cluster/resources did not print JSON ({exc}): {text[:120]!r}") from None
    if not isinstance(data, list):
        raise ProxmoxError(f"pvesh get /cluster/resources printed a JSON {type(data).__name__}, expected an array")
    guests = []
    for entry in data:
        if not isinstance(entry, dict):
            raise ProxmoxError(f"pvesh get /cluster/resources: entry {entry!r:.80} is not an object")
        if entry.get("type") not in GUEST_TYPES:
            continue
        vmid, node, status = entry.get("vmid"), entry.get("node"), entry.get("status", "unknown")
        if not isinstance(vmid, int) or isinstance(vmid, bool) or not isinstance(node, str) or not node:
            raise ProxmoxError(f"pvesh get /cluster/resources: guest entry without vmid or node: {entry!r:.160}")
        if entry.get("id") != f"{entry['type']}/{vmid}":
            raise ProxmoxError(f"pvesh get /cluster/resources: id {entry.get('id')!r} does not match vmid {vmid}")
        name = entry.get("name")
        guests.append(Guest(vmid, entry["type"], node, str(status), name if isinstance(name, str) else None))
    return guests


def find_guest(guests: list, vmid: int):
    """The guest with this VMID, or None; VMIDs are unique in a cluster, so two entries are an error."""
    found = [guest for guest in guests if guest.vmid == vmid]
    if len(found) > 1:
        raise ProxmoxError(f"pvesh get /cluster/resources lists VMID {vmid} {len(found)} times: {found}")
    return found[0] if found else None
