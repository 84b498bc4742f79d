"""A lab node as a podman container (``lab up --podman``): the node's image is a Debian root built by
scripts/debian-root from Debian's packages and imported into podman (no registry), Debian 12 or Debian 13.

The container joins the node's own network namespace (``--network ns:``, the same bridge and address as a
namespace node) and gets the node's mounts as volumes: its state dir at the lab's ``self`` path, its private
directories, the shared /etc/pve and the Proxmox CLI simulator. Its main process only holds the container; swtpm
and sshd start in it with ``podman exec``, so they run in the container's cgroup and stop with it. The container
shares the host's PID namespace (``--pid host``) so that the pid files swtpm and sshd write are the pids the lab
checks, as for a namespace node.

Debian's podman on this kind of host: runc (hybrid cgroups, where crun is not the default) and explicit ulimits
(podman's defaults ask for more open files than the host's hard limit, and runc fails with "error setting
rlimit").
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from nodelab.node import Node
from nodelab.settings import LAB_DIR, PRIVATE_DIRS, SHARED_PVE_DIR, SIM_BIN_MOUNT, Settings
from nodelab.system import LabError, run, wait_until

PODMAN_RUN_OPTIONS = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
PODMAN_TIMEOUT = 60


class ContainerNode(Node):
    def __init__(self, settings: Settings, index: int, image: str, root_dir: Path):
        super().__init__(settings, index)
        self.image = image
        # The Debian root the image was made from (scripts/debian-root build).
        self.root_dir = root_dir
        self.container = settings.netns(self.name)

    @property
    def recorded_root(self) -> str | None:
        return self.record().get("image")

    def ensure(self) -> list[str]:
        self.root = self.image  # ensure() compares it with the recorded image
        return super().ensure()

    def nsenter(self, argv: list[str]) -> list[str]:
        return ["podman", "exec", self.container, *argv]

    def stop(self) -> None:
        remove_containers([self.container])
        super().stop()

    def _start_holder(self) -> None:
        settings = self.settings
        inner = self.inner_dir
        volumes = [f"{self.dir}:{inner}", f"{settings.etc_pve}:{SHARED_PVE_DIR}"]
        volumes += [f"{self.dir / name}:{path}" for path, name in PRIVATE_DIRS.items()]
        sim = LAB_DIR / "pve_sim"
        volumes += [f"{settings.shared_dir / 'bin'}:{SIM_BIN_MOUNT}:ro", f"{sim}:{sim}:ro"]
        argv = ["podman", "run", "--detach", "--name", self.container, "--hostname", self.name]
        argv += ["--network", f"ns:/run/netns/{self.netns}", "--pid", "host", *PODMAN_RUN_OPTIONS]
        argv += [item for volume in volumes for item in ("--volume", volume)]
        argv += ["--tmpfs", "/run", "--tmpfs", "/tmp", self.image]
        # The main process names the node's dir, so `lab down` finds it even without records.
        argv += ["/bin/bash", "-c", 'mkdir -p /run/sshd && exec -a "$0" sleep infinity']
        argv += [f"{settings.instance}-holder {self.dir}"]
        proc = run(argv, check=False, timeout=PODMAN_TIMEOUT)
        if proc.returncode != 0:
            raise LabError(f"node {self.name}: podman run failed: {proc.stderr.strip()}")
        pid = 0

        def started() -> bool:
            nonlocal pid
            inspect = run(["podman", "inspect", "--format", "{{.State.Pid}}", self.container], check=False)
            pid = int(inspect.stdout.strip() or 0) if inspect.returncode == 0 else 0
            return pid > 0 and self.in_node(pid)

        if not wait_until(started, 10.0, 0.1):
            raise LabError(f"node {self.name}: container {self.container} did not start in the node's namespace")
        record = {"index": self.index, "address": self.address, "holder_pid": pid, "image": self.image}
        self.record_path.write_text(json.dumps(record))


def remove_containers(names: list[str]) -> None:
    if names:
        subprocess.run(["podman", "rm", "--force", "--time", "0", *names], capture_output=True, check=False)


def lab_containers(settings: Settings) -> list[str]:
    """The lab instance's containers, running or not."""
    proc = subprocess.run(
        ["podman", "ps", "--all", "--format", "{{.Names}}", "--filter", f"name=^{settings.prefix}pve"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.split() if proc.returncode == 0 else []
