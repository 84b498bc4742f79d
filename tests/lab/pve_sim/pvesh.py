"""``pvesh get``: the two API paths the collection reads, as JSON.

- ``/cluster/resources [--type vm|node|storage]``: entries built like
  pve-manager's PVE::API2::Cluster ``resources`` (VMs via
  PVE::API2Tools::extract_vm_stats, then nodes, then storages);
- ``/nodes/<node>/qemu/<vmid>/config [--current]``: the VM config with its digest.

Output as PVE::CLIFormatter prints ``--output-format json`` (canonical, compact,
one line) or ``json-pretty``. The default text table is not simulated.
"""

from __future__ import annotations

import json
import re
import sys
import time

from pve_sim import cluster, paths, runstate, vmconfig
from pve_sim.args import Command
from pve_sim.errors import PveError, config_missing, fail, param_error

FORMATS = ("json", "json-pretty")
# Config keys whose values the API returns as numbers.
NUMERIC_KEYS = ("acpi", "cores", "sockets", "onboot", "numa", "template", "vcpus")
MEBIBYTE = 1024 * 1024


def _vm_status(vmid: int, node: str) -> tuple[str, int]:
    if node == paths.nodename():
        since = runstate.running_since(vmid)
        return ("running", since) if since is not None else ("stopped", 0)
    return cluster.published_status(vmid, node)


def _vm_entry(vmid: int, node: str, now: int) -> dict:
    config = vmconfig.load(paths.config_path(node, vmid)) or vmconfig.VmConfig({})
    status, since = _vm_status(vmid, node)
    memory = config.options.get("memory", "512").split(",")[0].removeprefix("current=")
    return {
        "cpu": 0,
        "disk": 0,
        "diskread": 0,
        "diskwrite": 0,
        "id": f"qemu/{vmid}",
        "maxcpu": int(config.options.get("cores", "1")) * int(config.options.get("sockets", "1")),
        "maxdisk": 0,
        "maxmem": int(memory) * MEBIBYTE if memory.isdigit() else 512 * MEBIBYTE,
        "mem": 0,
        "name": config.options.get("name", f"VM {vmid}"),
        "netin": 0,
        "netout": 0,
        "node": node,
        "status": status,
        "template": int(config.options.get("template", "0")),
        "type": "qemu",
        "uptime": now - since if status == "running" and since else 0,
        "vmid": vmid,
    }


def cluster_resources(kind: str | None, now: int) -> list[dict]:
    found = []
    if kind in (None, "vm"):
        # Proxmox walks the vmlist with Perl's string sort.
        for vmid, node in sorted(cluster.vm_list().items(), key=lambda item: str(item[0])):
            found.append(_vm_entry(vmid, node, now))
    nodes = cluster.node_names()
    if kind in (None, "node"):
        for node in nodes:
            found.append({"id": f"node/{node}", "level": "", "node": node, "status": "online", "type": "node"})
    if kind in (None, "storage"):
        for node in nodes:
            found.append(
                {
                    "content": "backup,iso,snippets,vztmpl",
                    "id": f"storage/{node}/local",
                    "node": node,
                    "plugintype": "dir",
                    "shared": 0,
                    "status": "available",
                    "storage": "local",
                    "type": "storage",
                }
            )
    return found


def vm_config(node: str, vmid: int) -> dict:
    config = vmconfig.load(paths.config_path(node, vmid))
    if config is None:
        raise config_missing(node, vmid)
    result: dict = {"digest": config.digest}
    for key, value in config.options.items():
        result[key] = int(value) if key in NUMERIC_KEYS and value.isdigit() else value
    if config.description is not None:
        result["description"] = config.description
    return result


def _print(data, output_format: str) -> None:
    if output_format == "json-pretty":
        sys.stdout.write(json.dumps(data, sort_keys=True, indent=3, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "get":
        sys.stderr.write("ERROR: the simulator implements only 'pvesh get <api_path> --output-format json'\n")
        return 255
    path = "/" + argv[1].strip("/")
    options = {"output-format": "str", "type": "str", "current": "bool", "noborder": "bool", "noheader": "bool"}
    try:
        values = Command(f"pvesh get {path}", [], options).parse(argv[2:])
        output_format = values.get("output-format", "text")
        if output_format not in FORMATS:
            raise PveError(f"pvesh (simulator): --output-format {output_format} is not simulated; use json")
        if path == "/cluster/resources":
            kind = values.get("type")
            if kind is not None and kind not in ("vm", "storage", "node", "sdn"):
                raise param_error({"type": f"value '{kind}' does not have a value in the enumeration"}, "")
            _print(cluster_resources(kind, int(time.time())), output_format)
            return 0
        match = re.fullmatch(r"/nodes/([^/]+)/qemu/([0-9]+)/config", path)
        if match:
            node = match[1]
            cluster.check_node_exists(node)
            _print(vm_config(node, int(match[2])), output_format)
            return 0
        raise PveError(f"No 'get' handler defined for '{path}'")
    except PveError as err:
        return fail(err, in_task=False)
