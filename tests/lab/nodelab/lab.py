"""The whole lab: preflight, up (idempotent, reconciles the node count), down, status, inventory."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from nodelab import network
from nodelab.container import ContainerNode, lab_containers, remove_containers
from nodelab.keys import ensure_keypair, write_private
from nodelab.node import Node
from nodelab.settings import (
    BASE_DIR,
    CLUSTER,
    LAB_DIR,
    MAX_NODES,
    NODE_PYTHON,
    PRIVATE_DIRS,
    SHARED_PVE_DIR,
    SIM_BIN,
    SIM_BIN_MOUNT,
    TCTI,
    Settings,
)
from nodelab.system import LabError, kill_all, mounts_under, processes_mentioning, run

DEBIAN_ROOT = LAB_DIR.parent.parent / "scripts" / "debian-root"
TESTS_DIR = LAB_DIR.parent
# An empty cache: mmdebstrap downloads and unpacks about 150 packages (about 30 s).
DEBIAN_ROOT_TIMEOUT = 600
# Host directories the lab may have to create as mount points; recorded so the last `lab down` removes them.
HOST_DIRS_RECORD = BASE_DIR / "host-dirs.json"
SSH_READY_TIMEOUT = 10.0
TOOLS = {
    "ip": "iproute2",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "swtpm": "swtpm",
    "/usr/sbin/sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "ssh": "openssh-client",
    NODE_PYTHON: "python3",
}


class Lab:
    def __init__(self, settings: Settings):
        self.settings = settings

    # -- what exists ---------------------------------------------------------
    def nodes_on_disk(self) -> list[Node]:
        if not self.settings.nodes_dir.is_dir():
            return []
        indexes = []
        for entry in self.settings.nodes_dir.iterdir():
            match = re.fullmatch(r"pve([1-9][0-9]*)", entry.name)
            if match:
                indexes.append(int(match[1]))
        return [Node(self.settings, index) for index in sorted(indexes)]

    def is_up(self) -> bool:
        return self.settings.state_file.exists()

    def state(self) -> dict:
        try:
            return json.loads(self.settings.state_file.read_text())
        except FileNotFoundError:
            raise LabError(f"lab {self.settings.instance} is not up: run tests/lab/lab up") from None

    # -- up ------------------------------------------------------------------
    def preflight(self) -> None:
        if os.geteuid() != 0:
            raise LabError(
                "lab up needs root: it creates network namespaces, a bridge and mounts "
                "(run it as root, e.g. sudo tests/lab/lab up)"
            )
        missing = [f"{tool} (Debian package {package})" for tool, package in TOOLS.items() if not shutil.which(tool)]
        if missing:
            raise LabError(f"lab up needs {', '.join(missing)}: install them (scripts/bootstrap does)")
        probe = run(["ip", "netns", "list"], check=False)
        if probe.returncode != 0:
            raise LabError(f"this system has no 'ip netns' support (ip netns list: {probe.stderr.strip()})")
        probe = run(["unshare", "--net", "--mount", "--uts", "true"], check=False)
        if probe.returncode != 0:
            raise LabError(
                "this kernel or container does not allow new network/mount namespaces "
                f"(unshare --net --mount --uts: {probe.stderr.strip()})"
            )

    def up(self, count: int, debian13: frozenset[int] = frozenset(), podman: bool = False) -> dict:
        """Bring up pve1..pve<count>; the nodes numbered in `debian13` run from a Debian 13 root
        (scripts/debian-root), the others from the host's own system. With `podman` every node is a container
        (nodelab.container) of a Debian 12 or, for the nodes in `debian13`, a Debian 13 image."""
        if not 1 <= count <= MAX_NODES:
            raise LabError(f"the number of nodes must be from 1 to {MAX_NODES}, got {count}")
        beyond = sorted(index for index in debian13 if not 1 <= index <= count)
        if beyond:
            raise LabError(f"--debian13 names nodes the lab does not have: {', '.join(f'pve{i}' for i in beyond)}")
        self.preflight()
        if podman and not shutil.which("podman"):
            raise LabError("lab up --podman needs podman (Debian package podman): run scripts/bootstrap")
        trixie = debian_root() if debian13 and not podman else None
        images = {}
        if podman:
            wanted = {"trixie" if index in debian13 else "bookworm" for index in range(1, count + 1)}
            images = {suite: (debian_image(suite), debian_root(suite)) for suite in sorted(wanted)}
        started = time.monotonic()
        settings = self.settings
        with _host_dirs_lock():
            for path in (settings.root, settings.nodes_dir, settings.self_dir, settings.shared_dir, settings.etc_pve):
                path.mkdir(mode=0o755, parents=True, exist_ok=True)
            settings.controller_dir.mkdir(mode=0o700, exist_ok=True)
            self._ensure_host_dirs()
        self._link_simulator()
        network.ensure_bridge(settings)
        controller_key = settings.controller_dir / "id_ed25519"
        controller_public = ensure_keypair(controller_key, f"ironclaw lab {settings.instance} controller")

        removed = []
        for node in self.nodes_on_disk():
            if node.index > count:
                node.destroy()
                shutil.rmtree(settings.etc_pve / "nodes" / node.name, ignore_errors=True)
                removed.append(node.name)
        if podman:
            nodes = [
                ContainerNode(settings, index, *images["trixie" if index in debian13 else "bookworm"])
                for index in range(1, count + 1)
            ]
        else:
            nodes = [Node(settings, index, trixie if index in debian13 else None) for index in range(1, count + 1)]
        for node in nodes:
            node.prepare_dirs()
        ek_ca_dir = self._manufacture(nodes)
        self._write_keys(nodes, controller_public)
        self._write_cluster(nodes)
        changes = {node.name: node.ensure() for node in nodes}
        self._wait_for_ssh(nodes)
        state = {
            "instance": settings.instance,
            "subnet": str(settings.subnet),
            "bridge": settings.bridge,
            "host_address": settings.host_address,
            "tcti": TCTI,
            "cluster": CLUSTER,
            "ek_ca_dir": str(ek_ca_dir),
            "controller_key": str(controller_key),
            "known_hosts": str(settings.controller_dir / "known_hosts"),
            "nodes": {
                node.name: {"address": node.address, "netns": node.netns, "debian": _release(node)} for node in nodes
            },
        }
        write_private(settings.state_file, json.dumps(state, indent=2) + "\n", 0o644)
        return {"removed": removed, "started": changes, "seconds": round(time.monotonic() - started, 2)}

    def _manufacture(self, nodes: list[Node]) -> Path:
        """The lab's EK CA (made once under the instance directory) and, for each node whose TPM has no state yet,
        a TPM state with EK certificates from it, as a vendor ships one: its nodes enroll in ``ca`` mode
        (docs/attestation.md). Returns the CA's trust directory (the controller's ironclaw_ek_ca_dir)."""
        sys.path.insert(0, str(TESTS_DIR))
        from rig.ekca import EkCa  # noqa: PLC0415 - the tests' EK CA rig, stdlib only

        ca = EkCa("ironclaw-lab-vendor", root=self.settings.root / "ek-ca")
        for node in nodes:
            state = node.dir / "swtpm"
            if not any(state.glob("tpm2-00.*")):
                ca.manufacture(state)
        return ca.trust_dir

    def _link_simulator(self) -> None:
        """The directory nodes see as /usr/local/sbin: qm and pvesh, linked to the simulator in this checkout."""
        bin_dir = self.settings.shared_dir / "bin"
        bin_dir.mkdir(mode=0o755, exist_ok=True)
        for name in ("qm", "pvesh"):
            link = bin_dir / name
            if not (link.is_symlink() and os.readlink(link) == str(SIM_BIN / name)):
                link.unlink(missing_ok=True)
                link.symlink_to(SIM_BIN / name)

    def _ensure_host_dirs(self) -> None:
        """Mount points must exist on the host; note the ones the lab creates."""
        try:
            created = json.loads(HOST_DIRS_RECORD.read_text())
        except (FileNotFoundError, ValueError):
            created = []
        # sshd needs its privilege separation directory.
        for path in [*PRIVATE_DIRS, SHARED_PVE_DIR, SIM_BIN_MOUNT, "/run/sshd"]:
            if not os.path.isdir(path):
                os.makedirs(path, mode=0o755, exist_ok=True)
                created.append(path)
        HOST_DIRS_RECORD.write_text(json.dumps(sorted(set(created))))

    def _write_keys(self, nodes: list[Node], controller_public: str) -> None:
        """Root of every node accepts the controller and the other nodes (as root on a PVE cluster does)."""
        authorized = "".join(f"{key}\n" for key in [controller_public] + [node.root_key_public for node in nodes])
        for node in nodes:
            write_private(node.dir / "root" / ".ssh" / "authorized_keys", authorized)
        known = "".join(f"{node.address} {node.host_key_public}\n" for node in nodes)
        write_private(self.settings.controller_dir / "known_hosts", known, 0o644)

    def _write_cluster(self, nodes: list[Node]) -> None:
        """/etc/pve as pmxcfs would show it: members, node dirs, their SSH host keys, storage.cfg."""
        etc_pve = self.settings.etc_pve
        members = {
            "cluster": {"name": CLUSTER, "nodes": len(nodes), "quorate": 1, "version": len(nodes)},
            "nodelist": {node.name: {"id": node.index, "ip": node.address, "online": 1} for node in nodes},
            "version": len(nodes),
        }
        write_private(etc_pve / ".members", json.dumps(members, indent=2) + "\n", 0o644)
        for node in nodes:
            node_dir = etc_pve / "nodes" / node.name
            (node_dir / "qemu-server").mkdir(parents=True, exist_ok=True)
            write_private(node_dir / "ssh_known_hosts", f"{node.name} {node.host_key_public}\n", 0o644)
        storage = "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,snippets\n"
        write_private(etc_pve / "storage.cfg", storage, 0o640)

    def _wait_for_ssh(self, nodes: list[Node]) -> None:
        """Log in to every node once (in parallel): `lab up` returns when Ansible can connect."""
        procs = {node.name: subprocess.Popen(self.ssh_argv(node.address, "hostname"), **_QUIET) for node in nodes}
        failures = []
        for name, proc in procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=SSH_READY_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            if proc.returncode != 0 or stdout.strip() != name:
                failures.append(f"{name}: exit {proc.returncode}, {stderr.strip() or stdout.strip()}")
        if failures:
            raise LabError("ssh to the lab nodes failed:\n" + "\n".join(failures))

    def ssh_argv(self, address: str, *command: str) -> list[str]:
        return ["ssh", *self.ssh_options(), f"root@{address}", *command]

    def ssh_options(self) -> list[str]:
        controller = self.settings.controller_dir
        return [
            "-i",
            str(controller / "id_ed25519"),
            "-o",
            f"UserKnownHostsFile={controller / 'known_hosts'}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
        ]

    # -- down ----------------------------------------------------------------
    def down(self) -> list[str]:
        """Remove everything of this instance, recorded or not; returns what was removed."""
        settings = self.settings
        removed = []
        containers = lab_containers(settings) if shutil.which("podman") else []
        if containers:
            remove_containers(containers)
            removed += [f"container {name}" for name in containers]
        for name in network.netns_names(settings.prefix):
            network.delete_netns(name)
            removed.append(f"network namespace {name}")
        leftovers = processes_mentioning(f"{settings.root}/")
        if leftovers:
            kill_all(leftovers)
            removed.append(f"{len(leftovers)} processes")
        for link in network.host_links(settings.prefix):
            run(["ip", "link", "del", link], check=False)
            removed.append(f"link {link}")
        for mountpoint in mounts_under(settings.root):
            run(["umount", "-l", mountpoint], check=False)
            removed.append(f"mount {mountpoint}")
        if settings.root.exists():
            shutil.rmtree(settings.root)
            removed.append(str(settings.root))
        with _host_dirs_lock():
            removed += _remove_host_dirs()
        return removed

    # -- status and inventory ------------------------------------------------
    def status(self) -> tuple[str, bool]:
        settings = self.settings
        nodes = self.nodes_on_disk()
        namespaces = network.netns_names(settings.prefix)
        if not self.is_up() and not nodes and not namespaces:
            return f"lab {settings.instance}: down", True
        lines = [
            f"lab {settings.instance}: bridge {settings.bridge} {settings.host_address}/{settings.subnet.prefixlen}, "
            f"state in {settings.root}",
            f"{'node':<6} {'address':<15} {'namespaces':<10} {'swtpm':<6} {'sshd':<6} {'ssh':<4} root",
        ]
        healthy = self.is_up()
        for node in nodes:
            checks = [node.holder_alive(), node.swtpm_alive(), node.sshd_alive(), _port_open(node.address, 22)]
            healthy = healthy and all(checks)
            cells = ["up" if ok else "DOWN" for ok in checks]
            root = node.record().get("image") or node.recorded_root or "host"
            lines.append(
                f"{node.name:<6} {node.address:<15} {cells[0]:<10} {cells[1]:<6} {cells[2]:<6} {cells[3]:<4} {root}"
            )
        stray = sorted(set(namespaces) - {node.netns for node in nodes})
        if stray:
            healthy = False
            lines.append(f"stray network namespaces (run lab down): {' '.join(stray)}")
        if not self.is_up():
            lines.append("incomplete: no lab.json (an interrupted up?); run lab up again, or lab down")
        return "\n".join(lines), healthy

    def inventory(self) -> str:
        state = self.state()
        ssh_args = " ".join(
            [
                f"-o UserKnownHostsFile={state['known_hosts']}",
                "-o StrictHostKeyChecking=yes",
                "-o IdentitiesOnly=yes",
            ]
        )
        lines = [
            f"# Ansible inventory of lab {state['instance']} (tests/lab/lab inventory)",
            "all:",
            "  children:",
            "    ironclaw_nodes:",
            "      hosts:",
        ]
        for name, node in state["nodes"].items():
            lines += [f"        {name}:", f"          ansible_host: {node['address']}"]
            # What /etc/debian_version says on the node (12.x: the host's Debian 12, 13.x: a Debian 13 root).
            lines.append(f"          ironclaw_lab_debian: {json.dumps(node.get('debian', 'unknown'))}")
        variables = {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": state["controller_key"],
            "ansible_ssh_common_args": ssh_args,
            "ansible_python_interpreter": NODE_PYTHON,
            "ironclaw_pve": True,
            "ironclaw_tcti": state["tcti"],
            "ironclaw_cluster": state["cluster"],
        }
        if state.get("ek_ca_dir"):
            # The lab's swtpms carry EK certificates from the lab's own CA: its nodes enroll in ca mode and are
            # attested migration targets (docs/attestation.md).
            variables.update(ironclaw_ek_trust="ca", ironclaw_ek_ca_dir=state["ek_ca_dir"])
        else:
            # A lab brought up before its TPMs had EK certificates: tofu, allowed as targets explicitly.
            variables.update(ironclaw_ek_trust="tofu", ironclaw_allow_tofu_targets=True)
        lines.append("      vars:")
        # JSON scalars are YAML scalars: strings come out quoted, booleans as true/false.
        lines += [f"        {key}: {json.dumps(value)}" for key, value in variables.items()]
        return "\n".join(lines) + "\n"


def debian_root(suite: str = "trixie") -> Path:
    """The Debian root scripts/debian-root builds (cached under the checkout's .build/), built if needed."""
    env = {**os.environ, "DEBIAN_ROOT_SUITE": suite}
    proc = run([str(DEBIAN_ROOT), "build"], check=False, timeout=DEBIAN_ROOT_TIMEOUT, env=env)
    root = Path(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None
    if proc.returncode != 0 or root is None or not (root / "usr" / "sbin" / "sshd").exists():
        raise LabError(f"scripts/debian-root build failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return root


def debian_image(suite: str) -> str:
    """That root as a podman image (scripts/debian-root image), imported if needed."""
    env = {**os.environ, "DEBIAN_ROOT_SUITE": suite}
    proc = run([str(DEBIAN_ROOT), "image"], check=False, timeout=DEBIAN_ROOT_TIMEOUT, env=env)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise LabError(f"scripts/debian-root image ({suite}) failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def _release(node: Node) -> str:
    """The Debian release a node runs (its root's, or the host's), as /etc/debian_version says."""
    base = getattr(node, "root_dir", None) or node.root or Path("/")
    try:
        return (base / "etc" / "debian_version").read_text().strip()
    except OSError:
        return "unknown"


_QUIET = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}


def _port_open(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _host_dirs_lock():
    """Lab instances come up and go down at once (the tests run several): the base directory and the host's mount
    points are made and removed under one lock, taken on /run itself so that nothing is left behind."""
    fd = os.open("/run", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_host_dirs() -> list[str]:
    """After the last instance is down: remove the (empty) mount points the lab created on the host."""
    if not BASE_DIR.is_dir() or any(entry.is_dir() for entry in BASE_DIR.iterdir()):
        return []
    removed = []
    try:
        created = json.loads(HOST_DIRS_RECORD.read_text())
    except (FileNotFoundError, ValueError):
        created = []
    for path in sorted(created, key=len, reverse=True):
        try:
            os.rmdir(path)
            removed.append(path)
        except OSError:
            pass  # gone already, or something else put files there: leave it
    HOST_DIRS_RECORD.unlink(missing_ok=True)
    BASE_DIR.rmdir()
    return removed
