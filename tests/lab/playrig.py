"""Running the collection's playbooks against lab nodes over SSH, and looking at what they leave behind."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from labrig import LabInstance, lab_unavailable

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".build" / "collections"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
PLAYBOOK_TIMEOUT = 180


@contextlib.contextmanager
def enrolled_lab(
    instance: tuple[str, str],
    nodes: int,
    vms: dict[int, tuple[int, str]],
    root: Path,
    debian13: str = "",
    rig_class: type[Rig] | None = None,
):
    """A node lab of its own (instance name, network) with `nodes` nodes, the VMs created in the Proxmox simulator
    ({vmid: (node number, uuid)}), the controller initialised and every node enrolled; taken down afterwards.
    `debian13` names the nodes that run from a Debian 13 root (``lab up --debian13``, e.g. "2" or "2,3");
    `rig_class` (a Rig) runs the playbooks another way.
    Skips, saying why, where the lab cannot run."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip(f"{ANSIBLE_PLAYBOOK} not found: run the tests with the venv's python (make bootstrap)")
    lab = LabInstance(*instance)
    lab.cli("down")
    lab.cli("up", str(nodes), *(["--debian13", debian13] if debian13 else []))
    try:
        for vmid, (node, uuid) in vms.items():
            lab.qm(node, "create", str(vmid), "--smbios1", f"uuid={uuid}")
        rig = (rig_class or Rig)(lab, root)
        rig.run("init")
        rig.run("enroll")
        yield rig
    finally:
        lab.cli("down")


class Rig:
    """ansible-playbook runs of the collection's playbooks against the lab, and what they leave behind."""

    def __init__(self, lab: LabInstance, root: Path):
        self.lab = lab
        self.root = root
        self.controller_dir = root / "controller"
        self.inventory = root / "inventory.yml"
        self.inventory.write_text(lab.cli("inventory").stdout)
        (root / "ansible.cfg").write_text("")
        secret = root / "master-key.bin"
        secret.write_bytes(os.urandom(4096))
        self.secrets = root / "secrets.json"
        self.secrets.write_text(json.dumps({"ironclaw_secrets": [{"name": "master-key", "src": str(secret)}]}))
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
        self.env.update(
            ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
            ANSIBLE_CONFIG=str(root / "ansible.cfg"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_LOCAL_TEMP=str(root / "tmp"),
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(root / "cp"),
            ANSIBLE_RETRY_FILES_ENABLED="0",
            TSS2_LOG="all+NONE",
        )

    def command(self, tool: str) -> list[str]:
        """How to start ansible-playbook or ansible: the venv's (the controller's ansible-core)."""
        return [str(ANSIBLE_PLAYBOOK.parent / tool)]

    def run(self, playbook: str, *args: str, fail: bool = False) -> str:
        argv = [*self.command("ansible-playbook"), "-i", str(self.inventory), f"ironclaw.sealed.{playbook}"]
        argv += ["-e", f"ironclaw_controller_dir={self.controller_dir}", *args]
        proc = subprocess.run(
            argv, env=self.env, cwd=self.root, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False
        )
        shown = f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
        assert (proc.returncode != 0) == fail, shown
        return proc.stdout

    def provision(self, node: str, vmid: int, *args: str, fail: bool = False) -> str:
        extra = ["-e", f"ironclaw_node={node}", "-e", f"ironclaw_vmid={vmid}", "-e", f"@{self.secrets}"]
        return self.run("provision", *extra, *args, fail=fail)

    def verify(self, node: str, vmid: int, *args: str, fail: bool = False) -> str:
        return self.run("verify", "-e", f"ironclaw_node={node}", "-e", f"ironclaw_vmid={vmid}", *args, fail=fail)

    def unsealed(self, node: str, vmid: int, vm_uuid: str) -> dict[str, bytes]:
        """A VM's secrets unsealed on `node` into a scratch directory there (removed again): name -> bytes."""
        dest = f"/root/unsealed-{vmid}"
        args = {"state": "unsealed", "vmid": vmid, "vm_uuid": vm_uuid, "dest": dest, "tcti": "{{ ironclaw_tcti }}"}
        args["cluster"] = "{{ ironclaw_cluster }}"  # the cached manifest is checked first (A9)
        module = ["-m", "ironclaw.sealed.ironclaw_seal", "-a", json.dumps(args)]
        proc = subprocess.run(
            [*self.command("ansible"), node, "-i", str(self.inventory), *module],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=PLAYBOOK_TIMEOUT,
            check=False,
        )
        assert proc.returncode == 0, f"unseal on {node}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr}"
        listing = self.lab.ssh(
            int(node.removeprefix("pve")),
            f'cd {dest} && for f in *; do printf \'%s %s\\n\' "$f" "$(base64 -w0 "$f")"; done && rm -rf {dest}',
        ).stdout
        return {name: base64.b64decode(data) for name, data in (line.split() for line in listing.splitlines())}

    def snapshot(self) -> dict[str, str]:
        """Every file on the controller, in the nodes' state directories and their hookscript snippets, with its
        SHA-256."""
        found = {}
        for path in sorted(self.controller_dir.rglob("*")):
            if path.is_file() and ".locks" not in path.parts:
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        files = (
            "find /var/lib/ironclaw /var/lib/vz/snippets -path '*/.locks' -prune -o -type f -print0 2>/dev/null"
            " | sort -z | xargs -0r sha256sum"
        )
        for index in (1, 2):
            listing = self.lab.ssh(index, files).stdout
            for line in listing.splitlines():
                digest, path = line.split(maxsplit=1)
                found[f"pve{index}:{path}"] = digest
        return found

    def manifests(self, vm_uuid: str) -> list[dict]:
        """The payloads of a VM's manifests in the store, oldest first."""
        paths = sorted((self.controller_dir / "store" / "vms" / vm_uuid).glob("manifest-*.json"))
        return [json.loads(base64.b64decode(json.loads(path.read_text())["payload"])) for path in paths]
