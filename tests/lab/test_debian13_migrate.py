"""Moving a VM off a Proxmox VE 8 node (Debian 12) onto a Proxmox VE 9 node (Debian 13) and back, as admins
upgrade a cluster: the migrate playbook between a lab node on the host's Debian 12 and one running from a Debian 13
root (tests/lab/lab up --debian13, built by scripts/debian-root: Python 3.13, python3-tpm2-pytss 2.3,
python3-cryptography 43, swtpm 0.7.1, OpenSSH 10). On each node the sealed secret unseals to the same bytes, the
verify playbook passes and the node's hookscript lets the VM start; at the end the VM is decommissioned.

The playbooks run on the newest ansible-core the collection supports (2.21, which needs Python >= 3.12): from a
venv on the Debian 13 root's Python 3.13 (``scripts/debian-root ansible``): with the fixture's init and enroll,
this module is the controller matrix's integration smoke on the newest ansible-core (init, enroll, provision,
migrate, verify, decommission); the other tests cover the venv's ansible-core on Debian 12's Python 3.11.

A lab instance of its own (iclabp, 10.213.9.0/24, 2 nodes: pve1 Debian 12, pve2 Debian 13).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from labrig import lab_unavailable
from playrig import REPO, Rig, enrolled_lab

pytestmark = pytest.mark.lab

INSTANCE = ("iclabp", "10.213.9.0/24")
VMID = 100
VM_UUID = "6f1c2a4e-9b7d-4c1a-8e2f-000000000913"
DEBIAN_ROOT = REPO / "scripts" / "debian-root"
# What each node reports: Debian's release, its python3, python3-tpm2-pytss and python3-cryptography.
PROBE = (
    "cat /etc/debian_version; python3 -c 'import sys, cryptography; print(sys.version.split()[0], "
    "cryptography.__version__)'; dpkg-query -W -f '${Version}\\n' python3-tpm2-pytss"
)


class Rig221(Rig):
    """The playbooks run by ansible-core 2.21 in the Debian 13 root, which sees the rig's files and the lab's keys."""

    def command(self, tool: str) -> list[str]:
        env = {key: value for key, value in self.env.items() if key.startswith(("ANSIBLE_", "TSS2_"))}
        binds = ["--bind", str(self.root), "--bind", str(self.lab.settings.root)]
        assignments = [f"{key}={value}" for key, value in sorted(env.items())]
        return [str(DEBIAN_ROOT), "ansible", *binds, "/usr/bin/env", f"HOME={self.root}", *assignments, tool]

    def run(self, playbook: str, *args: str, fail: bool = False) -> str:
        # This controller's cryptography has no X.509 path verifier (45 or later): it cannot check the lab's EK
        # certificate chains, so here the nodes enroll tofu, allowed as migration targets explicitly.
        tofu = ("-e", "ironclaw_ek_trust=tofu", "-e", "ironclaw_allow_tofu_targets=true")
        return super().run(playbook, *args, *tofu, fail=fail)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """pve1 (the host's Debian 12) and pve2 (a Debian 13 root) enrolled; VM 100 created on pve1."""
    if lab_unavailable() is None:
        # The root and the ansible-core venv, built (or found in .build/) before the lab comes up: from an empty
        # cache about 30 s and 20 s.
        # Its wheels come through the pip of the python running the tests (the venv's: scripts/debian-root runs
        # the first python3 on PATH).
        argv = [str(DEBIAN_ROOT), "ansible", "ansible", "--version"]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
        build = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, env=env)
        assert build.returncode == 0, f"scripts/debian-root ansible: exit {build.returncode}\n{build.stderr[-3000:]}"
        assert build.stdout.startswith("ansible [core 2.21."), build.stdout
    root = tmp_path_factory.mktemp("debian13")
    with enrolled_lab(INSTANCE, 2, {VMID: (1, VM_UUID)}, root, debian13="2", rig_class=Rig221) as rig:
        yield rig


def migrate(rig: Rig, source: int, target: int) -> str:
    nodes = ["-e", f"ironclaw_source=pve{source}", "-e", f"ironclaw_target=pve{target}"]
    # The lab's swtpms have no EK certificates: its nodes are enrolled tofu, which a migration allows only when told.
    tofu = ["-e", "ironclaw_allow_tofu_targets=true"]
    return rig.run("migrate", "-e", f"ironclaw_vmid={VMID}", *nodes, "-e", "ironclaw_migrate_vm=true", *tofu)


def check_on(rig: Rig, node: int, version: int, secret: bytes) -> None:
    """The VM's sealed state on `node`: same bytes unsealed, verify passes, and the node's hookscript (which a
    migration attaches) lets the VM start."""
    assert rig.unsealed(f"pve{node}", VMID, VM_UUID) == {"master-key": secret}
    out = rig.verify(f"pve{node}", VMID)
    assert f"VM {VMID} on pve{node}: manifest v{version}, 1 secret(s) verified (master-key)" in out
    started = rig.lab.qm(node, "start", str(VMID), check=False)
    assert started.returncode == 0, f"{started.stdout}\n{started.stderr}"
    assert f"ironclaw: VM {VMID}: sealed state verified (manifest v{version})" in started.stdout
    assert rig.lab.qm(node, "status", str(VMID)).stdout.strip() == "status: running"


def test_vm_migrates_from_debian12_to_debian13_node_and_back_unsealing_the_same_bytes(rig):
    old, new = (rig.lab.ssh(node, PROBE).stdout.split() for node in (1, 2))
    assert old[0].startswith("12.") and old[1].startswith("3.11.") and old[3].startswith("1.2."), old
    assert new[0].startswith("13.") and new[1].startswith("3.13.") and new[3].startswith("2.3."), new
    assert new[2].split(".")[0] == "43", new
    # As on a node of the host's release: no other node's state dir, no controller key in its view.
    hidden = "ls -A /run/ironclaw-lab/iclabp/nodes /run/ironclaw-lab/iclabp/controller 2>/dev/null | wc -l"
    assert rig.lab.ssh(2, hidden).stdout.strip() == "0"
    secret = (rig.root / "master-key.bin").read_bytes()

    rig.provision("pve1", VMID)
    assert rig.unsealed("pve1", VMID, VM_UUID) == {"master-key": secret}
    rig.lab.qm(1, "start", str(VMID))
    # The VM runs: the export shuts it down, qm migrate moves it, the source copy is revoked.
    for source, target, version in ((1, 2, 2), (2, 1, 3)):
        out = migrate(rig, source, target)
        assert f"VM {VMID} migrated: its sealed state is on pve{target} (manifest v{version})" in out
        gone = rig.lab.ssh(source, f"test -e /var/lib/ironclaw/{VMID} && echo present || echo gone").stdout.strip()
        assert gone == "gone", f"the copy on pve{source} was revoked"
        newest = rig.manifests(VM_UUID)[-1]
        assert (newest["version"], newest["node"]["name"]) == (version, f"pve{target}")
        check_on(rig, target, version, secret)
    # What pve2 writes outside its private dirs lands in its overlay, not in the cached Debian 13 root.
    rig.lab.ssh(2, "echo written > /usr/local/share/iclabp-marker && cat /usr/local/share/iclabp-marker")
    root = rig.lab.node(2).recorded_root
    assert root and not (Path(root) / "usr" / "local" / "share" / "iclabp-marker").exists(), root

    # The end of the smoke on ansible-core 2.21: the VM, running again on pve1, is shut down and deleted on
    # request, its sealed state with it.
    out = rig.run(
        "decommission", "-e", f"ironclaw_vmid={VMID}", "-e", "destroy_stop_vm=true", "-e", "destroy_delete_vm=true"
    )
    assert "pve1 destroyed" in out, out[-3000:]
    gone = rig.lab.ssh(1, f"test -e /var/lib/ironclaw/{VMID} && echo present || echo gone").stdout.strip()
    assert gone == "gone", "the sealed state on pve1 was destroyed"
    assert rig.lab.qm(1, "config", str(VMID), check=False).returncode != 0, "the VM itself was deleted (opt-in)"
