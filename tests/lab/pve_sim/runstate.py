"""Whether a VM "runs" on this node: a state file in the node's private /run/qemu-server.

Proxmox knows a VM runs from its QEMU pid file there; the simulator starts no
QEMU and writes ``<vmid>.sim.json`` instead.
"""

from __future__ import annotations

import json
import os
import time

from pve_sim import paths


def _path(vmid: int):
    return paths.run_dir() / f"{vmid}.sim.json"


def running_since(vmid: int) -> int | None:
    try:
        return int(json.loads(_path(vmid).read_text())["since"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def is_running(vmid: int) -> bool:
    return running_since(vmid) is not None


def set_running(vmid: int) -> None:
    path = _path(vmid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"status": "running", "since": int(time.time())}))
    os.replace(tmp, path)


def set_stopped(vmid: int) -> None:
    try:
        _path(vmid).unlink()
    except FileNotFoundError:
        pass
