"""The cluster view every node shares through /etc/pve.

- ``.members``: cluster name and node list with addresses, in the JSON format
  of pmxcfs's virtual ``/etc/pve/.members`` (the lab writes it; without it the
  nodes are the directories under ``nodes/``);
- ``nodes/<node>/qemu-server/<vmid>.conf``: which node holds which VM;
- ``.vmstatus/<vmid>.json``: the last state each node reported for its VMs.
  It stands in for the status that every node's pvestatd broadcasts and that
  ``pvesh get /cluster/resources`` reads (pmxcfs's ``.rrd``).
"""

from __future__ import annotations

import json
import os
import re
import time

from pve_sim import paths
from pve_sim.errors import PveError

MEMBERS = ".members"
STATUS_DIR = ".vmstatus"


def members() -> dict:
    try:
        return json.loads((paths.etc_pve() / MEMBERS).read_text())
    except FileNotFoundError:
        nodes_dir = paths.etc_pve() / "nodes"
        names = sorted(p.name for p in nodes_dir.iterdir() if p.is_dir()) if nodes_dir.is_dir() else []
        return {"nodelist": {name: {"id": i + 1, "online": 1} for i, name in enumerate(names)}}


def node_names() -> list[str]:
    return sorted(members().get("nodelist", {}))


def node_ip(node: str) -> str | None:
    return members().get("nodelist", {}).get(node, {}).get("ip")


def check_node_exists(node: str) -> None:
    """PVE::Cluster::check_node_exists."""
    if node not in node_names():
        raise PveError(f"no such cluster node '{node}'")


def vm_list() -> dict[int, str]:
    """vmid -> node of every VM in the cluster (pmxcfs's .vmlist)."""
    found = {}
    nodes_dir = paths.etc_pve() / "nodes"
    if not nodes_dir.is_dir():
        return found
    for node_dir in nodes_dir.iterdir():
        qemu_dir = node_dir / "qemu-server"
        if not qemu_dir.is_dir():
            continue
        for conf in qemu_dir.iterdir():
            match = re.fullmatch(r"([1-9][0-9]*)\.conf", conf.name)
            if match:
                found[int(match[1])] = node_dir.name
    return found


def locate(vmid: int) -> str | None:
    return vm_list().get(vmid)


def publish_status(vmid: int, node: str, status: str) -> None:
    directory = paths.etc_pve() / STATUS_DIR
    directory.mkdir(exist_ok=True)
    path = directory / f"{vmid}.json"
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps({"node": node, "status": status, "since": int(time.time())}))
    os.replace(tmp, path)


def published_status(vmid: int, node: str) -> tuple[str, int]:
    """(status, since) as last reported by `node`; ("unknown", 0) if it reported nothing for this VM."""
    try:
        report = json.loads((paths.etc_pve() / STATUS_DIR / f"{vmid}.json").read_text())
    except (FileNotFoundError, ValueError):
        return "unknown", 0
    if report.get("node") != node:
        return "unknown", 0
    return report.get("status", "unknown"), int(report.get("since", 0))
