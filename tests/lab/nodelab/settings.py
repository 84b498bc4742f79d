"""Names, addresses and paths of one lab instance.

The default instance is ``iclab`` on 10.213.0.0/24. A second instance (the
lab's own tests use one, so they never tear down a lab someone brought up)
takes ``IRONCLAW_LAB_INSTANCE`` and ``IRONCLAW_LAB_SUBNET``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from pathlib import Path

BASE_DIR = Path("/run/ironclaw-lab")
DEFAULT_INSTANCE = "iclab"
DEFAULT_SUBNET = "10.213.0.0/24"
# Node N gets host address FIRST_NODE_HOST + N in the subnet; the host side (bridge) gets .1.
FIRST_NODE_HOST = 10
MAX_NODES = 50
TPM_PORT = 2321
TCTI = f"swtpm:host=127.0.0.1,port={TPM_PORT}"
CLUSTER = "lab"
NODE_PYTHON = "/usr/bin/python3"
LAB_DIR = Path(__file__).resolve().parent.parent
SIM_BIN = LAB_DIR / "pve_sim" / "bin"

# Directories each node sees as its own (bind mounts from its state dir): path in the node -> name in the state dir.
PRIVATE_DIRS = {
    "/var/lib/ironclaw": "var-lib-ironclaw",
    "/etc/ironclaw": "etc-ironclaw",
    "/root": "root",
    "/var/lib/vz": "var-lib-vz",
    "/run/qemu-server": "run-qemu-server",
}
SHARED_PVE_DIR = "/etc/pve"
SIM_BIN_MOUNT = "/usr/local/sbin"


class SettingsError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Settings:
    instance: str = DEFAULT_INSTANCE
    subnet: ipaddress.IPv4Network = ipaddress.IPv4Network(DEFAULT_SUBNET)

    @classmethod
    def from_env(cls) -> Settings:
        instance = os.environ.get("IRONCLAW_LAB_INSTANCE", DEFAULT_INSTANCE)
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", instance):
            raise SettingsError(f"IRONCLAW_LAB_INSTANCE must be 1-8 of a-z0-9 starting with a letter, got {instance!r}")
        try:
            subnet = ipaddress.IPv4Network(os.environ.get("IRONCLAW_LAB_SUBNET", DEFAULT_SUBNET))
        except ValueError as exc:
            raise SettingsError(f"IRONCLAW_LAB_SUBNET is not an IPv4 network: {exc}") from None
        if not subnet.is_private or subnet.num_addresses < 256:
            raise SettingsError(f"IRONCLAW_LAB_SUBNET must be a private /24 or larger, got {subnet}")
        return cls(instance, subnet)

    # -- names -------------------------------------------------------------
    @property
    def prefix(self) -> str:
        """Every network namespace and host link of the instance starts with this."""
        return f"{self.instance}-"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def netns(self, node: str) -> str:
        return f"{self.prefix}{node}"

    def host_veth(self, node: str) -> str:
        return f"{self.prefix}{node}"

    # -- addresses ---------------------------------------------------------
    @property
    def host_address(self) -> str:
        return str(self.subnet[1])

    def node_address(self, index: int) -> str:
        return str(self.subnet[FIRST_NODE_HOST + index])

    # -- paths ---------------------------------------------------------------
    @property
    def root(self) -> Path:
        return BASE_DIR / self.instance

    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def controller_dir(self) -> Path:
        return self.root / "controller"

    @property
    def shared_dir(self) -> Path:
        return self.root / "shared"

    @property
    def etc_pve(self) -> Path:
        return self.shared_dir / "etc-pve"

    @property
    def nodes_dir(self) -> Path:
        return self.root / "nodes"

    @property
    def self_dir(self) -> Path:
        """Inside a node, its own state dir appears here; the other nodes' are hidden."""
        return self.root / "self"

    def node_dir(self, node: str) -> Path:
        return self.nodes_dir / node


def node_name(index: int) -> str:
    return f"pve{index}"
