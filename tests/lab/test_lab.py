"""The node lab: up/down leave nothing behind, nodes are isolated, SSH works, the Proxmox CLI simulator behaves."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import time

import pytest
import yaml
from labrig import LAB, SESSION_NODES
from nodelab import network
from nodelab.lab import HOST_DIRS_RECORD
from nodelab.settings import BASE_DIR, TPM_PORT
from nodelab.system import mounts_under, pid_alive, processes_mentioning

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import ProxmoxError
from ansible_collections.ironclaw.sealed.plugins.module_utils._pve.cli import ProxmoxCli

pytestmark = pytest.mark.lab

VM_UUID = "6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f"
# Records the phases it runs in; refuses pre-start when the file refuse-<vmid> exists next to it.
HOOKSCRIPT = """#!/bin/sh
echo "$2" >> /var/lib/vz/snippets/hook-$1.log
if [ "$2" = pre-start ] && [ -e /var/lib/vz/snippets/refuse-$1 ]; then
    echo "ironclaw: VM $1: refusing to start"
    exit 1
fi
exit 0
"""


def leftovers(instance) -> dict:
    """Everything of a lab instance that `lab down` must remove."""
    settings = instance.settings
    return {
        "network namespaces": network.netns_names(settings.prefix),
        "host links": network.host_links(settings.prefix),
        "processes": [pid for pid in processes_mentioning(f"{settings.root}/") if pid_alive(pid)],
        "mounts": mounts_under(settings.root),
        "state dir": [str(settings.root)] if settings.root.exists() else [],
    }


def node_pids(instance, count: int) -> dict[str, int]:
    pids = {}
    for index in range(1, count + 1):
        node = instance.node(index)
        pids.update({f"pve{index} holder": node.holder_pid, f"pve{index} sshd": node.sshd_pid})
        pids[f"pve{index} swtpm"] = node.swtpm_pid
    return pids


def install_hookscript(instance, index: int, vmid: int, refuse: bool) -> None:
    instance.ssh(
        index,
        f"cat > /var/lib/vz/snippets/ironclaw-hook <<'EOF'\n{HOOKSCRIPT}EOF\n"
        "chmod 0755 /var/lib/vz/snippets/ironclaw-hook\n"
        f"rm -f /var/lib/vz/snippets/hook-{vmid}.log\n"
        + (f": > /var/lib/vz/snippets/refuse-{vmid}" if refuse else f"rm -f /var/lib/vz/snippets/refuse-{vmid}"),
    )


def hook_phases(instance, index: int, vmid: int) -> list[str]:
    return instance.ssh(index, f"cat /var/lib/vz/snippets/hook-{vmid}.log 2>/dev/null || true").stdout.split()


# -- up and down ---------------------------------------------------------------


def test_up_reconciles_and_down_leaves_nothing_behind(scratch_lab):
    started = time.monotonic()
    scratch_lab.cli("up", "2")
    up_seconds = time.monotonic() - started
    assert scratch_lab.cli("status").returncode == 0
    first = node_pids(scratch_lab, 2)
    assert all(pid_alive(pid) for pid in first.values()), first

    grown = scratch_lab.cli("up", "N=3").stdout
    assert "pve1: up" in grown and "pve2: up" in grown and "pve3: started namespaces, swtpm, sshd" in grown
    assert node_pids(scratch_lab, 2) == first, "running nodes were restarted"

    shrunk = scratch_lab.cli("up", "1").stdout
    assert "pve2: removed" in shrunk and "pve3: removed" in shrunk
    settings = scratch_lab.settings
    assert network.netns_names(settings.prefix) == [settings.netns("pve1")]
    assert sorted(p.name for p in (settings.etc_pve / "nodes").iterdir()) == ["pve1"]
    members = json.loads((settings.etc_pve / ".members").read_text())
    assert list(members["nodelist"]) == ["pve1"]
    assert not pid_alive(first["pve2 sshd"]) and not pid_alive(first["pve2 swtpm"])
    all_pids = {**first, **node_pids(scratch_lab, 1)}
    host_dirs = json.loads(HOST_DIRS_RECORD.read_text())

    started = time.monotonic()
    down = scratch_lab.cli("down")
    down_seconds = time.monotonic() - started
    assert "removed" in down.stdout
    assert leftovers(scratch_lab) == {key: [] for key in leftovers(scratch_lab)}
    assert [name for name, pid in all_pids.items() if pid_alive(pid)] == []
    if not BASE_DIR.exists():
        # No other lab instance is up: the mount points the lab created on the host are gone too.
        assert [path for path in host_dirs if os.path.exists(path)] == []

    assert "nothing to do" in scratch_lab.cli("down").stdout
    assert scratch_lab.cli("status").stdout.strip() == f"lab {settings.instance}: down"
    print(f"lab up 2: {up_seconds:.2f}s, lab down: {down_seconds:.2f}s")


def test_down_cleans_up_after_a_failed_up(scratch_lab):
    settings = scratch_lab.settings
    # pve2's sshd cannot start: its host key is not a key.
    key = settings.node_dir("pve2") / "ssh" / "ssh_host_ed25519_key"
    key.parent.mkdir(parents=True)
    key.write_text("not a key\n")
    key.chmod(0o600)
    key.with_name(key.name + ".pub").write_text("ssh-ed25519 AAAAnotakey pve2\n")

    failed = scratch_lab.cli("up", "3", check=False)
    assert failed.returncode == 1
    assert "node pve2: sshd did not start" in failed.stderr
    assert network.netns_names(settings.prefix), "the failed up should have left namespaces to clean up"

    scratch_lab.cli("down")
    assert leftovers(scratch_lab) == {key: [] for key in leftovers(scratch_lab)}


def test_up_without_root_says_so(tmp_path):
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(LAB), "up"]
    proc = subprocess.run(nobody, capture_output=True, text=True, cwd=tmp_path, timeout=30, check=False)
    assert proc.returncode == 1
    assert "lab up needs root" in proc.stderr


# -- isolation -----------------------------------------------------------------


def test_nodes_cannot_see_each_others_private_dirs(lab_session):
    for index in (1, 2):
        lab_session.ssh(
            index,
            f"echo pve{index} > /var/lib/ironclaw/owner; echo pve{index} > /etc/ironclaw/owner; "
            f"echo pve{index} > /root/owner",
        )
    for index in (1, 2):
        seen = lab_session.ssh(index, "cat /var/lib/ironclaw/owner /etc/ironclaw/owner /root/owner").stdout.split()
        assert seen == [f"pve{index}"] * 3
    assert lab_session.ssh(3, "ls -A /var/lib/ironclaw /etc/ironclaw").stdout.split() == [
        "/etc/ironclaw:",
        "/var/lib/ironclaw:",
    ]
    # Nor through the lab's state dir: other nodes' dirs and the controller's keys are hidden.
    settings = lab_session.settings
    hidden = lab_session.ssh(2, f"ls -A {settings.nodes_dir} {settings.controller_dir}").stdout.split()
    assert hidden == [f"{settings.controller_dir}:", f"{settings.nodes_dir}:"]


def test_etc_pve_is_shared_and_nodes_have_their_hostnames(lab_session):
    lab_session.ssh(1, "echo from-pve1 > /etc/pve/shared-test")
    for index in range(1, SESSION_NODES + 1):
        assert lab_session.ssh(index, "hostname; cat /etc/pve/shared-test").stdout.split() == [
            f"pve{index}",
            "from-pve1",
        ]
    lab_session.ssh(2, "rm /etc/pve/shared-test")
    assert not (lab_session.settings.etc_pve / "shared-test").exists()


def test_swtpm_of_node1_is_not_reachable_from_node2(lab_session):
    node1, node2 = lab_session.node(1), lab_session.node(2)
    probe = (
        "import socket, sys\n"
        "try:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()\n    print('open')\n"
        "except OSError as exc:\n    print('closed', exc)\n"
    )
    from_node2 = lab_session.ssh(2, shlex.join(["python3", "-c", probe, node1.address, str(TPM_PORT)]))
    assert from_node2.stdout.startswith("closed"), from_node2.stdout
    # Inside each node the same TCTI port reaches that node's own swtpm.
    for node in (node1, node2):
        listener = lab_session.ssh(node.index, f"ss -Hltnp 'sport = :{TPM_PORT}'").stdout
        assert f"pid={node.swtpm_pid}," in listener and "127.0.0.1:" in listener, listener
    # And nothing of the lab listens in the host's network namespace.
    with pytest.raises(OSError):
        socket.create_connection((node1.address, TPM_PORT), timeout=2).close()
    host = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    for index in range(1, SESSION_NODES + 1):
        node = lab_session.node(index)
        assert f"pid={node.swtpm_pid}," not in host and f"pid={node.sshd_pid}," not in host


def test_ssh_works_with_the_lab_key_and_only_with_it(lab_session, tmp_path):
    for index in range(1, SESSION_NODES + 1):
        assert lab_session.ssh(index, "id -un; hostname").stdout.split() == ["root", f"pve{index}"]
    other_key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    argv = lab_session.lab.ssh_argv(lab_session.node(1).address, "true")
    argv[argv.index("-i") + 1] = str(other_key)
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode == 255 and "Permission denied" in refused.stderr


def test_inventory(lab_session):
    inventory = yaml.safe_load(lab_session.cli("inventory").stdout)
    group = inventory["all"]["children"]["ironclaw_nodes"]
    assert {name: host["ansible_host"] for name, host in group["hosts"].items()} == {
        f"pve{i}": lab_session.node(i).address for i in range(1, SESSION_NODES + 1)
    }
    assert group["vars"]["ironclaw_pve"] is True
    assert group["vars"]["ironclaw_tcti"] == f"swtpm:host=127.0.0.1,port={TPM_PORT}"
    assert group["vars"]["ironclaw_cluster"] == "lab"
    assert group["vars"]["ansible_user"] == "root"
    assert group["vars"]["ansible_python_interpreter"] == "/usr/bin/python3"
    assert "StrictHostKeyChecking=yes" in group["vars"]["ansible_ssh_common_args"]


# -- the Proxmox CLI simulator -------------------------------------------------------


def test_qm_is_only_on_the_nodes(lab_session):
    assert lab_session.ssh(1, "command -v qm pvesh").stdout.split() == ["/usr/local/sbin/qm", "/usr/local/sbin/pvesh"]
    assert subprocess.run(["sh", "-c", "command -v qm"], capture_output=True, check=False).returncode != 0


def test_qm_create_writes_meta_and_smbios1_like_proxmox(lab_session):
    before = int(time.time())
    lab_session.qm(1, "create", "9001", "--name", "agent", "--smbios1", f"uuid={VM_UUID}")
    config = lab_session.qm(1, "config", "9001").stdout
    lines = dict(line.split(": ", 1) for line in config.splitlines())
    assert lines["smbios1"] == f"uuid={VM_UUID}" and lines["name"] == "agent"
    meta = dict(item.split("=") for item in lines["meta"].split(","))
    assert list(meta) == ["creation-qemu", "ctime"] and before <= int(meta["ctime"]) <= time.time()
    assert list(lines) == sorted(lines)
    assert (lab_session.settings.etc_pve / "nodes/pve1/qemu-server/9001.conf").exists()
    assert lab_session.qm(1, "status", "9001").stdout == "status: stopped\n"
    again = lab_session.qm(2, "create", "9001", check=False)
    assert again.returncode == 255
    assert again.stderr == "unable to create VM 9001 - VM 9001 already exists on node 'pve1'\n"


def test_hookscript_refusal_blocks_qm_start(lab_session):
    vmid = 9002
    lab_session.qm(1, "create", str(vmid))
    install_hookscript(lab_session, 1, vmid, refuse=True)
    assert lab_session.qm(1, "set", str(vmid), "--hookscript", "local:snippets/ironclaw-hook").stdout == (
        f"update VM {vmid}: -hookscript local:snippets/ironclaw-hook\n"
    )

    refused = lab_session.qm(1, "start", str(vmid), check=False)
    assert refused.returncode == 255
    assert refused.stderr == (
        f"hookscript error for {vmid} on pre-start: command '/var/lib/vz/snippets/ironclaw-hook {vmid} pre-start' "
        "failed: exit code 1 \n"
    )
    assert f"VM {vmid}: refusing to start" in refused.stdout
    assert lab_session.qm(1, "status", str(vmid)).stdout == "status: stopped\n"
    assert hook_phases(lab_session, 1, vmid) == ["pre-start"]

    install_hookscript(lab_session, 1, vmid, refuse=False)
    lab_session.qm(1, "start", str(vmid))
    assert lab_session.qm(1, "status", str(vmid)).stdout == "status: running\n"
    lab_session.qm(1, "shutdown", str(vmid), "--timeout", "5")
    assert lab_session.qm(1, "status", str(vmid)).stdout == "status: stopped\n"
    assert hook_phases(lab_session, 1, vmid) == ["pre-start", "post-start", "pre-stop", "post-stop"]


def test_qm_set_hookscript_that_does_not_exist_is_refused(lab_session):
    lab_session.qm(1, "create", "9003")
    refused = lab_session.qm(1, "set", "9003", "--hookscript", "local:snippets/nope", check=False)
    assert refused.returncode == 255
    assert refused.stderr.startswith(
        "400 Parameter verification failed.\nhookscript: script 'local:snippets/nope' does not exist\n"
    )


def test_qm_migrate_moves_the_config_and_pvesh_shows_the_vm_on_the_target(lab_session):
    vmid = 9004
    lab_session.qm(1, "create", str(vmid), "--smbios1", f"uuid={VM_UUID}")
    moved = lab_session.qm(1, "migrate", str(vmid), "pve2")
    assert f"starting migration of VM {vmid} to node 'pve2' ({lab_session.node(2).address})" in moved.stdout
    assert "migration finished successfully (duration 00:00:0" in moved.stdout
    etc_pve = lab_session.settings.etc_pve
    assert not (etc_pve / f"nodes/pve1/qemu-server/{vmid}.conf").exists()
    assert f"smbios1: uuid={VM_UUID}" in (etc_pve / f"nodes/pve2/qemu-server/{vmid}.conf").read_text()
    for index in (1, 2, 3):
        resources = json.loads(
            lab_session.ssh(index, "pvesh get /cluster/resources --type vm --output-format json").stdout
        )
        entry = next(item for item in resources if item["vmid"] == vmid)
        assert (entry["node"], entry["id"], entry["status"]) == ("pve2", f"qemu/{vmid}", "stopped")
    gone = lab_session.qm(1, "config", str(vmid), check=False)
    missing = f"Configuration file 'nodes/pve1/qemu-server/{vmid}.conf' does not exist\n"
    assert (gone.returncode, gone.stderr) == (2, missing)
    assert f"smbios1: uuid={VM_UUID}" in lab_session.qm(2, "config", str(vmid)).stdout


@pytest.mark.parametrize(
    ("args", "node", "stderr"),
    [
        (["9005", "pve2"], 1, "can't migrate running VM without --online\n"),
        (["9005", "pve9"], 1, "no such cluster node 'pve9'\n"),
        (["9005", "pve1"], 1, "400 Parameter verification failed.\ntarget: target is local node.\n"),
        (["9005", "pve3"], 2, "Configuration file 'nodes/pve2/qemu-server/9005.conf' does not exist\n"),
    ],
)
def test_qm_migrate_refusals(lab_session, args, node, stderr):
    if lab_session.qm(1, "status", "9005", check=False).returncode != 0:
        lab_session.qm(1, "create", "9005")
        lab_session.qm(1, "start", "9005")
    refused = lab_session.qm(node, "migrate", *args, check=False)
    assert refused.returncode != 0
    assert refused.stderr.startswith(stderr)
    assert (lab_session.settings.etc_pve / "nodes/pve1/qemu-server/9005.conf").exists()


def test_online_migration_starts_the_vm_on_the_target_through_its_pre_start_hook(lab_session):
    vmid = 9006
    lab_session.qm(1, "create", str(vmid))
    for index in (1, 2):
        install_hookscript(lab_session, index, vmid, refuse=index == 2)
    lab_session.qm(1, "set", str(vmid), "--hookscript", "local:snippets/ironclaw-hook")
    lab_session.qm(1, "start", str(vmid))

    refused = lab_session.qm(1, "migrate", str(vmid), "pve2", "--online", check=False)
    assert refused.returncode == 255 and refused.stderr == "migration problems\n"
    assert f"[pve2] hookscript error for {vmid} on pre-start" in refused.stdout
    assert lab_session.qm(1, "status", str(vmid)).stdout == "status: running\n"

    install_hookscript(lab_session, 2, vmid, refuse=False)
    lab_session.qm(1, "migrate", str(vmid), "pve2", "--online")
    assert lab_session.qm(2, "status", str(vmid)).stdout == "status: running\n"
    assert hook_phases(lab_session, 2, vmid) == ["pre-start", "post-start"]
    resources = json.loads(lab_session.ssh(3, "pvesh get /cluster/resources --type vm --output-format json").stdout)
    assert next(item for item in resources if item["vmid"] == vmid)["status"] == "running"


# -- the collection's Proxmox adapter against the simulator ----------------------------


def adapter_on(lab_session, index: int) -> ProxmoxCli:
    """The adapter as it runs on node `index`, its commands sent over SSH."""

    def run(argv):
        proc = lab_session.ssh(index, shlex.join(argv), check=False)
        return proc.returncode, proc.stdout, proc.stderr

    return ProxmoxCli(run, node=f"pve{index}")


def test_adapter_reads_and_drives_vms_through_the_simulator(lab_session):
    vmid = 9007
    lab_session.qm(1, "create", str(vmid), "--smbios1", f"uuid={VM_UUID.upper()}", "--acpi", "0")
    pve1, pve3 = adapter_on(lab_session, 1), adapter_on(lab_session, 3)

    info = pve1.require_vm(vmid)
    assert (info.node, info.uuid, info.status) == ("pve1", VM_UUID, "stopped")
    assert pve3.vm_info(vmid) == info, "another node sees the same VM through the API"
    assert pve1.vm_info(9999).exists is False

    install_hookscript(lab_session, 1, vmid, refuse=True)
    assert pve1.set_hookscript(vmid, "local:snippets/ironclaw-hook") is True
    assert pve1.set_hookscript(vmid, "local:snippets/ironclaw-hook") is False
    with pytest.raises(ProxmoxError, match=f"hookscript error for {vmid} on pre-start"):
        pve1.start(vmid)
    install_hookscript(lab_session, 1, vmid, refuse=False)
    assert pve1.start(vmid) is True
    assert pve1.start(vmid) is False
    # acpi: 0, the guest ignores the powerdown request: the shutdown times out and the VM is stopped.
    assert pve1.shutdown(vmid, timeout=1) == "stopped"
    assert pve1.status(vmid) == "stopped"

    assert "migration finished successfully" in pve1.migrate(vmid, "pve3")
    assert pve3.vm_info(vmid).node == "pve3"
    with pytest.raises(ProxmoxError, match=f"VM {vmid} is not on node pve1"):
        pve1.migrate(vmid, "pve2")
    assert pve3.set_hookscript(vmid, None) is True
