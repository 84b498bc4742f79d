"""One lab node: its namespaces (held by a sleeping process), its swtpm and its sshd.

The holder is started as ``ip netns exec <netns> unshare --mount --uts`` and
sets up the node's mounts before it sleeps; every other process of the node
joins its network, mount and UTS namespaces with ``nsenter -t <holder>``, so
what an SSH session sees is the node's view:

- its own state dir at ``<lab>/self``, the other nodes' and the controller's
  dirs hidden under empty tmpfs mounts;
- private /var/lib/ironclaw, /etc/ironclaw, /root, /var/lib/vz and
  /run/qemu-server (bind mounts from its state dir);
- /etc/pve bound to the one directory all nodes share;
- the Proxmox CLI simulator as /usr/local/sbin/{qm,pvesh} (read-only).

A node given a Debian root (``lab up --debian13``) runs from it: the holder
mounts an overlay of that root (its writes go to the node's state dir, the
cached root is never written), with /proc, /dev, /sys, a fresh /run and /tmp,
and the mounts above inside it, and chroots into it before it sleeps;
``nsenter --root --wd`` puts every process of the node there, so its sshd,
swtpm, python3 and Python packages are that release's.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

from nodelab import network
from nodelab.keys import ensure_keypair
from nodelab.settings import (
    LAB_DIR,
    NODE_PYTHON,
    PRIVATE_DIRS,
    SHARED_PVE_DIR,
    SIM_BIN_MOUNT,
    TPM_PORT,
    Settings,
    node_name,
)
from nodelab.system import LabError, kill_all, pid_alive, processes_mentioning, read_pid, run, wait_until

START_TIMEOUT = 10.0

# Mode of each directory of a node's state dir.
_DIR_MODES = {
    "run": 0o755,
    "ssh": 0o700,
    "swtpm": 0o700,
    "var-lib-ironclaw": 0o700,
    "etc-ironclaw": 0o755,
    "root": 0o700,
    "root/.ssh": 0o700,
    "var-lib-vz": 0o755,
    "var-lib-vz/snippets": 0o755,
    "run-qemu-server": 0o755,
}

# Run inside the node's network namespace: wait until the swtpm ports accept connections.
_WAIT_FOR_PORTS = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[1])
for port in map(int, sys.argv[2:]):
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"nothing listens on 127.0.0.1:{port}")
            time.sleep(0.02)
"""


class Node:
    def __init__(self, settings: Settings, index: int, root: Path | None = None):
        self.settings = settings
        # The Debian root the node runs from (None: the host's own).
        self.root = root
        self.index = index
        self.name = node_name(index)
        self.address = settings.node_address(index)
        self.dir = settings.node_dir(self.name)
        self.netns = settings.netns(self.name)
        # The same paths as the node itself sees them.
        self.inner_dir = settings.self_dir

    # -- files -------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.dir / "node.json"

    def record(self) -> dict:
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def holder_pid(self) -> int | None:
        return self.record().get("holder_pid")

    @property
    def sshd_pid(self) -> int | None:
        return read_pid(self.dir / "run" / "sshd.pid")

    @property
    def swtpm_pid(self) -> int | None:
        return read_pid(self.dir / "run" / "swtpm.pid")

    @property
    def host_key_public(self) -> str:
        return (self.dir / "ssh" / "ssh_host_ed25519_key.pub").read_text().strip()

    @property
    def root_key_public(self) -> str:
        return (self.dir / "root" / ".ssh" / "id_ed25519.pub").read_text().strip()

    def prepare_dirs(self) -> None:
        self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        for name, mode in _DIR_MODES.items():
            path = self.dir / name
            path.mkdir(mode=mode, exist_ok=True)
            path.chmod(mode)
        ensure_keypair(self.dir / "ssh" / "ssh_host_ed25519_key", f"host key of lab node {self.name}")
        ensure_keypair(self.dir / "root" / ".ssh" / "id_ed25519", f"root@{self.name}")
        (self.dir / "ssh" / "sshd_config").write_text(self._sshd_config())

    def _sshd_config(self) -> str:
        inner = self.inner_dir
        return "\n".join(
            [
                f"# sshd of lab node {self.name}; it runs inside the node's namespaces.",
                f"ListenAddress {self.address}",
                "Port 22",
                f"HostKey {inner}/ssh/ssh_host_ed25519_key",
                f"PidFile {inner}/run/sshd.pid",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "AuthorizedKeysFile .ssh/authorized_keys",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                # As on Debian and Proxmox VE: PAM runs the account and session stack.
                "UsePAM yes",
                "X11Forwarding no",
                "PrintMotd no",
                "PrintLastLog no",
                "AcceptEnv LANG LC_*",
                # Ansible opens several connections at once.
                "MaxStartups 64:30:128",
                "MaxSessions 32",
                "Subsystem sftp /usr/lib/openssh/sftp-server",
                "",
            ]
        )

    # -- state -------------------------------------------------------------
    def in_node(self, pid: int | None) -> bool:
        """`pid` runs, inside this node's network namespace."""
        inode = network.netns_inode(self.netns)
        if not pid_alive(pid) or inode is None:
            return False
        try:
            return Path(f"/proc/{pid}/ns/net").stat().st_ino == inode
        except OSError:
            return False

    def holder_alive(self) -> bool:
        """The holder runs and still holds the namespace that has the node's name."""
        return self.in_node(self.holder_pid)

    @property
    def recorded_root(self) -> str | None:
        """The Debian root the running node was started from (None: the host's)."""
        return self.record().get("root")

    def sshd_alive(self) -> bool:
        return self.in_node(self.sshd_pid)

    def swtpm_alive(self) -> bool:
        return self.in_node(self.swtpm_pid)

    def nsenter(self, argv: list[str]) -> list[str]:
        """`argv` run inside the node's network, mount and UTS namespaces."""
        argv = ["--", *argv]
        if self.recorded_root:
            argv = ["--root", "--wd", *argv]
        return ["nsenter", "-t", str(self.holder_pid), "--net", "--mount", "--uts", *argv]

    # -- lifecycle ---------------------------------------------------------
    def ensure(self) -> list[str]:
        """Bring the node up, or repair what is missing; returns what was (re)started."""
        self.prepare_dirs()
        started = []
        wanted_root = str(self.root) if self.root else None
        if not self.holder_alive() or self.recorded_root != wanted_root:
            self.stop()
            network.create_node_network(self.settings, self.name, self.address)
            self._start_holder()
            started.append("namespaces")
        if not self.swtpm_alive():
            self._start_swtpm()
            started.append("swtpm")
        if not self.sshd_alive():
            self._start_sshd()
            started.append("sshd")
        return started

    def stop(self) -> None:
        """End the node's processes and remove its network namespace; its files stay."""
        if self.record().get("image"):
            # A container node (nodelab.container), seen from a plain Node (lab up with fewer nodes).
            subprocess.run(["podman", "rm", "--force", "--time", "0", self.netns], capture_output=True, check=False)
        network.delete_netns(self.netns)
        # A holder whose namespace is already gone: its command line names the node's dir (a recorded
        # pid alone could belong to another process by now).
        kill_all(processes_mentioning(f"{self.dir}\0"))
        for name in ("holder.ready", "sshd.pid", "swtpm.pid"):
            (self.dir / "run" / name).unlink(missing_ok=True)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _start_holder(self) -> None:
        settings = self.settings
        inner = self.inner_dir
        commands = ["set -eu", f"hostname {self.name}", f"mount --bind {q(self.dir)} {q(inner)}"]
        for path, name in PRIVATE_DIRS.items():
            commands.append(f"mount --bind {q(inner / name)} {q(path)}")
        commands += [
            f"mount --bind {q(settings.etc_pve)} {SHARED_PVE_DIR}",
            f"mount --bind -o ro {q(settings.shared_dir / 'bin')} {SIM_BIN_MOUNT}",
            # Hide every other node's state dir and the controller's keys from this node.
            f"mount -t tmpfs -o size=64k,mode=0755 {settings.instance}-hidden {q(settings.nodes_dir)}",
            f"mount -t tmpfs -o size=64k,mode=0755 {settings.instance}-hidden {q(settings.controller_dir)}",
        ]
        # The holder's command line names the node's dir, so `lab down` finds it even without records.
        name = q(f"{settings.instance}-holder {self.dir}")
        if self.root:
            commands += self._root_mounts()
            commands += [
                f": > {q(inner / 'run' / 'holder.ready')}",
                f"exec chroot {q(inner / 'rootfs')} /bin/bash -c 'exec -a \"$0\" sleep infinity' {name}",
            ]
        else:
            commands += [f": > {q(inner / 'run' / 'holder.ready')}", f"exec -a {name} sleep infinity"]
        log = self.dir / "run" / "holder.log"
        ready = self.dir / "run" / "holder.ready"
        ready.unlink(missing_ok=True)
        argv = ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--propagation", "private", "--"]
        argv += ["/bin/bash", "-c", "\n".join(commands)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        record = {"index": self.index, "address": self.address, "holder_pid": proc.pid}
        record["root"] = str(self.root) if self.root else None
        self.record_path.write_text(json.dumps(record))
        if not wait_until(lambda: ready.exists() or proc.poll() is not None, START_TIMEOUT) or not ready.exists():
            raise LabError(f"node {self.name}: its namespaces could not be set up:\n{log.read_text().strip()}")

    def _root_mounts(self) -> list[str]:
        """Holder commands (after the host-view mounts) that build the node's view of its Debian root at
        <self>/rootfs: an overlay whose writes land in the node's state dir, the kernel's file systems, a fresh
        /run and /tmp, and the node's own mounts. Other nodes' and the controller's dirs are not in it at all."""
        settings = self.settings
        inner = self.inner_dir
        new = inner / "rootfs"
        upper, work = inner / "overlay" / "upper", inner / "overlay" / "work"
        commands = [
            # Each start begins from the cached root as it is (the node's state lives in its private dirs).
            f"rm -rf {q(inner / 'overlay')}",
            f"mkdir -p {q(new)} {q(upper)} {q(work)}",
            f"mount -t overlay -o lowerdir={q(self.root)},upperdir={q(upper)},workdir={q(work)} "
            f"{settings.instance}-root {q(new)}",
            f"mount -t proc proc {q(new / 'proc')}",
            f"mount --rbind /dev {q(new / 'dev')}",
            f"mount --rbind /sys {q(new / 'sys')}",
            f"mount -t tmpfs -o mode=0755,nosuid,nodev {settings.instance}-run {q(new / 'run')}",
            f"mount -t tmpfs -o mode=1777,nosuid,nodev {settings.instance}-tmp {q(new / 'tmp')}",
            f"mkdir -p {q(new / 'run' / 'sshd')} {q(new / str(inner).lstrip('/'))}",
            # The node's own dir (its path on the host is under the tmpfs that hides every node's by now).
            f"mount --bind {q(inner)} {q(new / str(inner).lstrip('/'))}",
        ]
        for path, name in PRIVATE_DIRS.items():
            target = new / path.lstrip("/")
            commands += [f"mkdir -p {q(target)}", f"mount --bind {q(inner / name)} {q(target)}"]
        pve, sbin = new / SHARED_PVE_DIR.lstrip("/"), new / SIM_BIN_MOUNT.lstrip("/")
        # The simulator's qm and pvesh are links into this checkout: it is there read-only, at the same path.
        sim = LAB_DIR / "pve_sim"
        commands += [
            f"mkdir -p {q(pve)} {q(sbin)} {q(new / str(sim).lstrip('/'))}",
            f"mount --bind {q(settings.etc_pve)} {q(pve)}",
            f"mount --bind -o ro {q(settings.shared_dir / 'bin')} {q(sbin)}",
            f"mount --bind -o ro {q(sim)} {q(new / str(sim).lstrip('/'))}",
        ]
        return commands

    def _start_swtpm(self) -> None:
        inner = self.inner_dir
        (self.dir / "run" / "swtpm.pid").unlink(missing_ok=True)
        argv = [
            shutil.which("swtpm") or "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={inner}/swtpm",
            "--server",
            f"type=tcp,port={TPM_PORT},bindaddr=127.0.0.1",
            "--ctrl",
            f"type=tcp,port={TPM_PORT + 1},bindaddr=127.0.0.1",
            "--flags",
            "not-need-init,startup-clear",
            "--pid",
            f"file={inner}/run/swtpm.pid",
            "--log",
            f"file={inner}/run/swtpm.log,level=1",
            "--daemon",
        ]
        proc = run(self.nsenter(argv), check=False)
        if proc.returncode == 0:
            wait = [NODE_PYTHON, "-c", _WAIT_FOR_PORTS, str(START_TIMEOUT), str(TPM_PORT), str(TPM_PORT + 1)]
            proc = run(self.nsenter(wait), check=False)
        if proc.returncode != 0 or not self.swtpm_alive():
            log = _tail(self.dir / "run" / "swtpm.log")
            raise LabError(f"node {self.name}: swtpm did not start: {proc.stderr.strip()}\n{log}")

    def _start_sshd(self) -> None:
        (self.dir / "run" / "sshd.pid").unlink(missing_ok=True)
        config = self.inner_dir / "ssh" / "sshd_config"
        log = self.inner_dir / "run" / "sshd.log"
        proc = run(self.nsenter(["/usr/sbin/sshd", "-f", str(config), "-E", str(log)]), check=False)
        if proc.returncode != 0 or not wait_until(self.sshd_alive, START_TIMEOUT):
            text = _tail(self.dir / "run" / "sshd.log")
            raise LabError(f"node {self.name}: sshd did not start (exit {proc.returncode}):\n{text}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return f"({path} is missing)"


def q(value) -> str:
    return shlex.quote(str(value))
