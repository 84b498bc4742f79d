"""The lab as its tests drive it: ``tests/lab/lab`` run as users run it, SSH to the nodes, the host-side view.

The tests use lab instances of their own (``IRONCLAW_LAB_INSTANCE`` and
``IRONCLAW_LAB_SUBNET``), so a lab someone brought up with the defaults is
left alone.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from nodelab.lab import Lab
from nodelab.node import Node
from nodelab.settings import Settings

LAB = Path(__file__).resolve().parent / "lab"
# The session's lab, and a second instance for the tests that bring labs up and down themselves.
SESSION_INSTANCE = ("iclabt", "10.213.1.0/24")
SCRATCH_INSTANCE = ("iclabu", "10.213.2.0/24")
SESSION_NODES = 3
COMMAND_TIMEOUT = 60


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, a bridge, mounts): run the tests as root"
    if not shutil.which("ip"):
        return "the lab needs 'ip' (Debian package iproute2)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"no 'ip netns' support here: {probe.stderr.strip()}"
    for tool, package in (("swtpm", "swtpm"), ("sshd", "openssh-server"), ("nsenter", "util-linux")):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"the lab needs {tool} (Debian package {package}): run scripts/bootstrap"
    return None


@dataclasses.dataclass
class LabInstance:
    """One lab instance as the tests drive it: the entry point, SSH to nodes, the host-side view."""

    instance: str
    subnet: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "IRONCLAW_LAB_INSTANCE": self.instance, "IRONCLAW_LAB_SUBNET": self.subnet}

    @property
    def settings(self) -> Settings:
        return Settings(self.instance, ipaddress.IPv4Network(self.subnet))

    @property
    def lab(self) -> Lab:
        return Lab(self.settings)

    def node(self, index: int) -> Node:
        return Node(self.settings, index)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(LAB), *args], env=self.env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
        if check:
            assert proc.returncode == 0, f"lab {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def ssh(self, index: int, script: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell script as root on node `index` over SSH, with the lab's controller key."""
        argv = self.lab.ssh_argv(self.settings.node_address(index), script)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
        if check:
            assert proc.returncode == 0, f"pve{index}: {script}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def qm(self, index: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.ssh(index, shlex.join(["qm", *args]), check=check)
