"""Where the simulated node keeps things, and what it is called.

The defaults are Proxmox's own paths. Inside a lab node they are the node's
view: ``/etc/pve`` is the one directory all nodes share (like pmxcfs), while
``/run/qemu-server`` and ``/var/lib/vz`` are private to the node. The
``PVE_SIM_*`` variables move them, for tests that run the simulator outside a
lab node.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

# The QEMU version a new VM records in `meta: creation-qemu=...` (Proxmox VE 8.1).
QEMU_VERSION = "8.1.5"


def etc_pve() -> Path:
    return Path(os.environ.get("PVE_SIM_ETC_PVE", "/etc/pve"))


def run_dir() -> Path:
    """Per-node runtime state: which VMs "run" (Proxmox keeps QEMU pid files here)."""
    return Path(os.environ.get("PVE_SIM_RUN_DIR", "/run/qemu-server"))


def storage_local() -> Path:
    """Path of the node-local storage ``local`` (type dir); snippets live in its ``snippets/``."""
    return Path(os.environ.get("PVE_SIM_STORAGE_LOCAL", "/var/lib/vz"))


def nodename() -> str:
    """The local node's name: like PVE::INotify::nodename, the hostname up to the first dot."""
    return os.environ.get("PVE_SIM_NODE") or socket.gethostname().split(".", 1)[0]


def config_relpath(node: str, vmid: int) -> str:
    """Path of a VM config inside /etc/pve, as Proxmox names it in messages."""
    return f"nodes/{node}/qemu-server/{vmid}.conf"


def config_path(node: str, vmid: int) -> Path:
    return etc_pve() / config_relpath(node, vmid)
