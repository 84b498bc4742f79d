"""The pre-start hookscript on a Proxmox-like node: installed and attached by ironclaw_hookscript, it lets a VM with
intact sealed state start and refuses a tampered blob, a rolled-back VM directory and a deleted one.

A lab instance of its own (1 node), so the TPMs and state directories of the
session lab stay as the other lab tests expect them; one provisioned VM serves
every test, which run in order and leave the VM stopped.
"""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest
from playrig import ANSIBLE_PLAYBOOK, PLAYBOOK_TIMEOUT, Rig, enrolled_lab

pytestmark = pytest.mark.lab

INSTANCE = ("iclabh", "10.213.7.0/24")
VMID = 9500
VM_UUID = "6f1c2a4e-9b7d-4c1a-8e2f-000000009500"
VM_DIR = f"/var/lib/ironclaw/{VMID}"
SAVED = "/root/saved"
HOOK = "/var/lib/vz/snippets/ironclaw-prestart.pyz"
REFUSED = f"hookscript error for {VMID} on pre-start: command '{HOOK} {VMID} pre-start' failed: exit code 1"
INSTALL = """\
- name: Install the pre-start hookscript and attach it to the VM
  hosts: pve1
  gather_facts: false
  tasks:
    - name: Read the node's id
      ironclaw.sealed.ironclaw_node:
        tcti: "{{ ironclaw_tcti }}"
      register: node

    - name: Install and attach the hookscript
      ironclaw.sealed.ironclaw_hookscript:
        vmid: "{{ vmid }}"
        cluster: "{{ ironclaw_cluster }}"
        node_name: "{{ node.srk_name }}"
      register: hook

    - name: Show the result
      ansible.builtin.debug:
        msg: "hook path={{ hook.path }} volid={{ hook.volid }} attached={{ hook.attached }} changed={{ hook.changed }}"
"""


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """pve1 enrolled, VM 9500 created in the simulator and provisioned (manifest v1 cached on the node)."""
    with enrolled_lab(INSTANCE, 1, {VMID: (1, VM_UUID)}, tmp_path_factory.mktemp("hookscript")) as rig:
        rig.provision("pve1", VMID)
        yield rig


def install(rig: Rig) -> str:
    playbook = rig.root / "install-hook.yml"
    playbook.write_text(INSTALL)
    argv = [str(ANSIBLE_PLAYBOOK), "-i", str(rig.inventory), str(playbook), "-e", f"vmid={VMID}"]
    proc = subprocess.run(
        argv, env=rig.env, cwd=rig.root, capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def start(rig: Rig) -> subprocess.CompletedProcess:
    return rig.lab.qm(1, "start", str(VMID), check=False)


def status(rig: Rig) -> str:
    return rig.lab.qm(1, "status", str(VMID)).stdout.strip()


def assert_starts(rig: Rig, version: int) -> None:
    started = start(rig)
    assert started.returncode == 0, f"{started.stdout}\n{started.stderr}"
    assert f"ironclaw: VM {VMID}: sealed state verified (manifest v{version})" in started.stdout
    assert status(rig) == "status: running"
    rig.lab.qm(1, "stop", str(VMID))
    assert status(rig) == "status: stopped"


def assert_refused(rig: Rig, reason: str) -> None:
    refused = start(rig)
    assert refused.returncode == 255, f"{refused.stdout}\n{refused.stderr}"
    assert REFUSED in refused.stderr
    assert f"ironclaw: refusing to start VM {VMID}: " in refused.stdout
    assert reason in refused.stdout, refused.stdout
    assert status(rig) == "status: stopped"


def test_install_attaches_the_hookscript_and_the_vm_starts(rig):
    out = install(rig)
    assert (
        "hook path=/var/lib/vz/snippets/ironclaw-prestart.pyz volid=local:snippets/ironclaw-prestart.pyz "
        "attached=True changed=True"
    ) in out
    config = rig.lab.qm(1, "config", str(VMID)).stdout
    assert "hookscript: local:snippets/ironclaw-prestart.pyz\n" in config
    assert rig.lab.ssh(1, f"stat -c %a {HOOK}").stdout.strip() == "755"
    assert rig.lab.ssh(1, "cat /var/lib/ironclaw/hook/node.json").stdout.startswith('{"format":"ironclaw-hook-node/1"')
    assert "attached=True changed=False" in install(rig), "a second run changes nothing"
    assert_starts(rig, 1)


def test_tampered_blob_is_refused(rig):
    blob = f"{VM_DIR}/master-key.sealed"
    rig.lab.ssh(1, f"mkdir -p {SAVED} && cp -a {VM_DIR} {SAVED}/v1")
    flip = "import sys; p = sys.argv[1]; d = bytearray(open(p, 'rb').read()); d[-1] ^= 1; open(p, 'wb').write(d)"
    rig.lab.ssh(1, shlex.join(["python3", "-c", flip, blob]))
    assert_refused(rig, "blob 'master-key' was swapped or altered")
    rig.lab.ssh(1, f"cp -a {SAVED}/v1/master-key.sealed {blob}")
    assert_starts(rig, 1)


def test_rollback_to_an_older_copy_of_the_vm_dir_is_refused(rig):
    (rig.root / "master-key.bin").write_bytes(os.urandom(4096))
    rig.provision("pve1", VMID)
    assert_starts(rig, 2)
    # The older blobs, keyslot and manifest.json come back together: they match each other, not the floor.
    rig.lab.ssh(1, f"rm -rf {VM_DIR} && cp -a {SAVED}/v1 {VM_DIR}")
    assert_refused(rig, "rollback to version 1 while the floor is 2")


def test_deleted_vm_dir_is_refused(rig):
    rig.lab.ssh(1, f"rm -rf {VM_DIR}")
    assert_refused(rig, f"VM {VMID} has no sealed state on this node")
