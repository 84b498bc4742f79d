"""VM identity from Proxmox (ironclaw_pve: true) in the roles, over SSH against lab nodes.

The provision and verify playbooks take a VM's uuid and creation time from
Proxmox on its node; a uuid given as well must be Proxmox's ("VMIDs are
reused"), and a VM that is not on the node is refused, naming node and VMID.
A refusal writes nothing: not on the node, not on the controller.

A lab instance of its own (2 nodes), so the TPMs and state directories of the
session lab stay as the other lab tests expect them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from labrig import LabInstance, lab_unavailable

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".build" / "collections"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
INSTANCE = ("iclabi", "10.213.4.0/24")
PLAYBOOK_TIMEOUT = 180
# pve1 holds the first two VMs, pve2 the third; no VM has the fourth VMID.
SEALED, FRESH, ELSEWHERE, MISSING = 9300, 9301, 9302, 9399
UUIDS = {
    SEALED: "6f1c2a4e-9b7d-4c1a-8e2f-000000009300",
    FRESH: "6f1c2a4e-9b7d-4c1a-8e2f-000000009301",
    ELSEWHERE: "6f1c2a4e-9b7d-4c1a-8e2f-000000009302",
}
OTHER_UUID = "6f1c2a4e-9b7d-4c1a-8e2f-0000000093ff"


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

    def run(self, playbook: str, *args: str, fail: bool = False) -> str:
        argv = [str(ANSIBLE_PLAYBOOK), "-i", str(self.inventory), f"ironclaw.sealed.{playbook}"]
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

    def snapshot(self) -> dict[str, str]:
        """Every file on the controller and in the nodes' state directories, with its SHA-256."""
        found = {}
        for path in sorted(self.controller_dir.rglob("*")):
            if path.is_file() and ".locks" not in path.parts:
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        files = "find /var/lib/ironclaw -path '*/.locks' -prune -o -type f -print0 | sort -z | xargs -0r sha256sum"
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


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """Two enrolled lab nodes, VMs in the simulator, one VM provisioned with its identity from Proxmox."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip(f"{ANSIBLE_PLAYBOOK} not found: run the tests with the venv's python (make bootstrap)")
    lab = LabInstance(*INSTANCE)
    lab.cli("down")
    lab.cli("up", "2")
    try:
        for node, vmid in ((1, SEALED), (1, FRESH), (2, ELSEWHERE)):
            lab.qm(node, "create", str(vmid), "--smbios1", f"uuid={UUIDS[vmid]}")
        rig = Rig(lab, tmp_path_factory.mktemp("identity"))
        rig.run("init")
        rig.run("enroll")
        rig.provision("pve1", SEALED)
        yield rig
    finally:
        lab.cli("down")


def ctime_of(lab: LabInstance, node: int, vmid: int) -> int:
    meta = [line for line in lab.qm(node, "config", str(vmid)).stdout.splitlines() if line.startswith("meta: ")]
    return int(meta[0].split("ctime=")[1].split(",")[0])


def test_provision_and_verify_take_the_identity_from_proxmox(rig):
    (manifest,) = rig.manifests(UUIDS[SEALED])
    assert manifest["subject"] == {
        "vmid": SEALED,
        "vm_uuid": UUIDS[SEALED],
        "vm_ctime": ctime_of(rig.lab, 1, SEALED),
        "cluster": "lab",
    }
    assert rig.lab.ssh(1, f"ls /var/lib/ironclaw/{SEALED}").stdout.split() == [
        "approval.json",
        "keyslot.json",
        "manifest.json",
        "master-key.sealed",
    ]
    out = rig.verify("pve1", SEALED, "-e", f"ironclaw_vm_uuid={UUIDS[SEALED]}")
    assert f"VM {SEALED} on pve1: manifest v1, 1 secret(s) verified (master-key)" in out


@pytest.mark.parametrize(
    ("given", "refusal"),
    [
        (
            ["-e", f"ironclaw_vm_uuid={OTHER_UUID}"],
            f"VM {FRESH} on node pve1 has uuid {UUIDS[FRESH]} in Proxmox, not {OTHER_UUID} as given: VMIDs are reused",
        ),
        # The same uuid in capitals is the same VM: only the creation time is wrong here.
        (
            ["-e", f"ironclaw_vm_uuid={UUIDS[FRESH].upper()}", "-e", "ironclaw_vm_ctime=1000000000"],
            f"VM {FRESH} on node pve1 was created at",
        ),
    ],
    ids=["uuid", "ctime"],
)
def test_an_identity_other_than_proxmoxs_is_refused_with_nothing_written(rig, given, refusal):
    before = rig.snapshot()
    out = rig.provision("pve1", FRESH, *given, fail=True)
    assert refusal in out
    assert "Nothing was changed." in out
    assert rig.snapshot() == before
    assert rig.manifests(UUIDS[FRESH]) == []


def test_verify_refuses_a_uuid_other_than_proxmoxs(rig):
    out = rig.verify("pve1", SEALED, "-e", f"ironclaw_vm_uuid={OTHER_UUID}", fail=True)
    assert f"VM {SEALED} on node pve1 has uuid {UUIDS[SEALED]} in Proxmox, not {OTHER_UUID} as given" in out


@pytest.mark.parametrize(
    ("node", "vmid", "refusal"),
    [
        ("pve1", MISSING, f"VM {MISSING} does not exist in the Proxmox cluster (asked on node pve1"),
        ("pve1", ELSEWHERE, f"VM {ELSEWHERE} is on node pve2, not on node pve1"),
    ],
    ids=["nowhere", "on-another-node"],
)
def test_a_vm_missing_on_the_node_is_refused_with_nothing_written(rig, node, vmid, refusal):
    before = rig.snapshot()
    out = rig.provision(node, vmid, fail=True)
    assert refusal in out
    assert rig.snapshot() == before
    out = rig.verify(node, vmid, fail=True)
    assert refusal in out
