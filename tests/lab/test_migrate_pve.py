"""The migrate playbook on Proxmox-like nodes: a running VM is shut down, its sealed state moves, `qm migrate`
moves the VM itself, and the target's pre-start hookscript lets it start there (and refuses a tampered blob).
A running VM is refused with nothing changed when the migration may not stop it.

A lab instance of its own (3 nodes). One VM serves every test; they run in order, moving it pve1 -> pve2 -> pve3.
"""

from __future__ import annotations

import base64
import json
import shlex

import pytest
from playrig import Rig, enrolled_lab

pytestmark = pytest.mark.lab

INSTANCE = ("iclabg", "10.213.8.0/24")
VMID = 100
VM_UUID = "6f1c2a4e-9b7d-4c1a-8e2f-000000000100"
BLOB = f"/var/lib/ironclaw/{VMID}/master-key.sealed"
HOOK = "/var/lib/vz/snippets/ironclaw-prestart.pyz"


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """pve1..pve3 enrolled; VM 100 created on pve1 in the simulator, provisioned there and running."""
    with enrolled_lab(INSTANCE, 3, {VMID: (1, VM_UUID)}, tmp_path_factory.mktemp("migrate")) as rig:
        rig.provision("pve1", VMID)
        rig.lab.qm(1, "start", str(VMID))
        yield rig


def migrate(rig: Rig, source: int, target: int, *args: str, fail: bool = False) -> str:
    nodes = ["-e", f"ironclaw_source=pve{source}", "-e", f"ironclaw_target=pve{target}"]
    return rig.run("migrate", "-e", f"ironclaw_vmid={VMID}", *nodes, "-e", "ironclaw_migrate_vm=true", *args, fail=fail)


def status(rig: Rig, node: int) -> str:
    return rig.lab.qm(node, "status", str(VMID)).stdout.strip()


def holder(rig: Rig) -> list[str]:
    """The nodes whose directory in the shared /etc/pve holds the VM's config."""
    found = rig.lab.ssh(1, f"ls /etc/pve/nodes/*/qemu-server/{VMID}.conf").stdout.split()
    return [path.split("/")[4] for path in found]


def start(rig: Rig, node: int):
    return rig.lab.qm(node, "start", str(VMID), check=False)


def flip_last_byte(rig: Rig, node: int) -> None:
    flip = "import sys; p = sys.argv[1]; d = bytearray(open(p, 'rb').read()); d[-1] ^= 1; open(p, 'wb').write(d)"
    rig.lab.ssh(node, shlex.join(["python3", "-c", flip, BLOB]))


def test_running_vm_is_refused_without_stop_vm_and_nothing_changes(rig):
    assert status(rig, 1) == "status: running"
    before = rig.snapshot()
    out = migrate(rig, 1, 2, "-e", "ironclaw_stop_vm=false", fail=True)
    assert f"VM {VMID} is running on node pve1: nothing was changed on either node" in out
    assert rig.snapshot() == before, (
        "the controller, /var/lib/ironclaw and the snippets on pve1 and pve2 are as they were"
    )
    assert holder(rig) == ["pve1"]
    assert status(rig, 1) == "status: running"
    assert len(rig.manifests(VM_UUID)) == 1


@pytest.mark.parametrize(("source", "target", "version"), [(1, 2, 2), (2, 3, 3)], ids=["pve1-pve2", "pve2-pve3"])
def test_running_vm_migrates_and_starts_on_the_target(rig, source, target, version):
    assert status(rig, source) == "status: running"
    out = migrate(rig, source, target)
    assert f"VM {VMID} migrated: its sealed state is on pve{target} (manifest v{version})" in out
    # qm migrate (offline) refuses a running VM: it ran, so the export shut the VM down first.
    assert holder(rig) == [f"pve{target}"]
    assert status(rig, target) == "status: stopped"
    assert "hookscript: local:snippets/ironclaw-prestart.pyz\n" in rig.lab.qm(target, "config", str(VMID)).stdout
    assert rig.unsealed(f"pve{target}", VMID, VM_UUID) == {"master-key": (rig.root / "master-key.bin").read_bytes()}
    gone = rig.lab.ssh(source, f"test -e /var/lib/ironclaw/{VMID} && echo present || echo gone").stdout.strip()
    assert gone == "gone", "the source copy was revoked"
    newest = rig.manifests(VM_UUID)[-1]
    assert newest["version"] == version
    assert newest["node"]["name"] == f"pve{target}"
    assert (newest["migration"]["source"], newest["migration"]["target"]) == (f"pve{source}", f"pve{target}")
    started = start(rig, target)
    assert started.returncode == 0, f"{started.stdout}\n{started.stderr}"
    assert f"ironclaw: VM {VMID}: sealed state verified (manifest v{version})" in started.stdout
    assert status(rig, target) == "status: running"


def test_tampered_blob_on_the_target_is_refused_at_start(rig):
    rig.lab.qm(3, "stop", str(VMID))
    flip_last_byte(rig, 3)
    refused = start(rig, 3)
    assert refused.returncode == 255, f"{refused.stdout}\n{refused.stderr}"
    assert f"hookscript error for {VMID} on pre-start: command '{HOOK} {VMID} pre-start' failed" in refused.stderr
    assert f"ironclaw: refusing to start VM {VMID}: " in refused.stdout
    assert "blob 'master-key' was swapped or altered" in refused.stdout
    assert status(rig, 3) == "status: stopped"
    flip_last_byte(rig, 3)
    started = start(rig, 3)
    assert started.returncode == 0, f"{started.stdout}\n{started.stderr}"
    assert f"ironclaw: VM {VMID}: sealed state verified (manifest v3)" in started.stdout


def test_lab_nodes_enroll_attested_with_ek_certificates_from_the_lab_ca(rig):
    """The lab's swtpms carry EK certificates from the lab's CA: every node enrolls in ca mode, none as tofu."""
    for node in ("pve1", "pve2", "pve3"):
        envelope = json.loads((rig.controller_dir / "store" / "nodes" / f"{node}.json").read_text())
        record = json.loads(base64.b64decode(envelope["payload"]))
        assert record["attestation"]["trust"] == "ca", node
        assert len(record["attestation"]["ek_chain"]) >= 2, node
