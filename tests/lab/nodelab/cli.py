"""``tests/lab/lab up [N] | down | status | inventory``."""

from __future__ import annotations

import argparse
import json
import re
import sys

from nodelab.lab import Lab
from nodelab.settings import Settings, SettingsError
from nodelab.system import LabError

DEFAULT_NODES = 3


def _count(text: str) -> int:
    match = re.fullmatch(r"(?:N=)?([0-9]+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a number of nodes such as 3 or N=3, got {text!r}")
    return int(match[1])


def _nodes(text: str) -> frozenset[int]:
    found = set()
    for part in filter(None, text.split(",")):
        match = re.fullmatch(r"(?:pve)?([1-9][0-9]*)", part.strip())
        if not match:
            raise argparse.ArgumentTypeError(f"expected nodes such as pve2 or 2,3, got {text!r}")
        found.add(int(match[1]))
    return frozenset(found)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="lab",
        description="Proxmox-like lab nodes from Linux namespaces: sshd, swtpm and a qm/pvesh simulator per node.",
        epilog="IRONCLAW_LAB_INSTANCE and IRONCLAW_LAB_SUBNET select another lab instance (default iclab, "
        "10.213.0.0/24).",
    )
    commands = top.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="bring up N nodes pve1..pveN (default 3); again: repair, add or remove nodes")
    up.add_argument("nodes", nargs="?", type=_count, default=DEFAULT_NODES, metavar="N")
    up.add_argument(
        "--debian13",
        type=_nodes,
        default=frozenset(),
        metavar="NODES",
        help="these nodes (pve2 or 2,3) run from a Debian 13 (PVE 9) root built by scripts/debian-root; the others, "
        "and all nodes when it is left out, from the host's system (a running node whose root changes is restarted)",
    )
    up.add_argument(
        "--podman",
        action="store_true",
        help="every node is a podman container of a Debian 12 image (Debian 13 for the --debian13 nodes), built "
        "from Debian's packages by scripts/debian-root image; the network is the lab's, as for namespace nodes",
    )
    commands.add_parser("down", help="remove every namespace, process, mount, link and file of the lab")
    commands.add_parser("status", help="show the nodes and whether their namespaces, swtpm and sshd run")
    commands.add_parser("inventory", help="print an Ansible inventory (YAML) of the nodes")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        lab = Lab(Settings.from_env())
        if args.command == "up":
            report = lab.up(args.nodes, args.debian13, args.podman)
            for name, started in report["started"].items():
                print(f"{name}: {'started ' + ', '.join(started) if started else 'up'}")
            for name in report["removed"]:
                print(f"{name}: removed")
            print(f"lab {lab.settings.instance}: {args.nodes} nodes up in {report['seconds']}s")
        elif args.command == "down":
            removed = lab.down()
            print(f"lab {lab.settings.instance}: " + ("removed " + json.dumps(removed) if removed else "nothing to do"))
        elif args.command == "status":
            text, healthy = lab.status()
            print(text)
            return 0 if healthy else 1
        else:
            sys.stdout.write(lab.inventory())
    except (LabError, SettingsError) as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    return 0
