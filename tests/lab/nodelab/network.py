"""The lab's network: one bridge on the host, one network namespace per node joined to it by a veth pair."""

from __future__ import annotations

import hashlib
import os
import re

from nodelab.settings import Settings
from nodelab.system import LabError, kill_all, run

NETNS_DIR = "/run/netns"


def netns_names(prefix: str) -> list[str]:
    proc = run(["ip", "netns", "list"])
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    return sorted(name for name in names if name.startswith(prefix))


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(os.path.join(NETNS_DIR, name)).st_ino
    except FileNotFoundError:
        return None


def netns_pids(name: str) -> list[int]:
    proc = run(["ip", "netns", "pids", name], check=False)
    return [int(pid) for pid in proc.stdout.split() if pid.isdigit()]


def host_links(prefix: str) -> list[str]:
    proc = run(["ip", "-o", "link", "show"])
    names = []
    for line in proc.stdout.splitlines():
        match = re.match(r"\d+:\s+([^:@\s]+)", line)
        if match and match[1].startswith(prefix):
            names.append(match[1])
    return names


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def bridge_mac(settings: Settings) -> str:
    """A fixed, locally administered MAC: a bridge without one takes its lowest port's, which changes as
    nodes come and go and leaves the nodes' ARP entries for the host pointing nowhere."""
    digest = hashlib.sha256(settings.instance.encode()).digest()
    return ":".join(f"{byte:02x}" for byte in (0x02, *digest[:5]))


def ensure_bridge(settings: Settings) -> None:
    if not link_exists(settings.bridge):
        run(["ip", "link", "add", settings.bridge, "address", bridge_mac(settings), "type", "bridge"])
    address = f"{settings.host_address}/{settings.subnet.prefixlen}"
    if address not in run(["ip", "-o", "addr", "show", "dev", settings.bridge]).stdout:
        run(["ip", "addr", "add", address, "dev", settings.bridge])
    run(["ip", "link", "set", settings.bridge, "up"])


def create_node_network(settings: Settings, node: str, address: str) -> None:
    """A fresh network namespace with lo and eth0 (address on the lab subnet), its peer on the bridge."""
    netns, veth = settings.netns(node), settings.host_veth(node)
    run(["ip", "netns", "add", netns])
    if link_exists(veth):
        run(["ip", "link", "del", veth])
    run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
    run(["ip", "link", "set", veth, "master", settings.bridge, "up"])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])
    run(["ip", "-n", netns, "addr", "add", f"{address}/{settings.subnet.prefixlen}", "dev", "eth0"])
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])


def delete_netns(name: str) -> None:
    """End every process in the namespace, then remove it (its veth pair goes with it)."""
    kill_all(netns_pids(name))
    if netns_inode(name) is not None:
        proc = run(["ip", "netns", "del", name], check=False)
        if proc.returncode != 0 and netns_inode(name) is not None:
            raise LabError(f"cannot delete network namespace {name}: {proc.stderr.strip()}")
