# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Proxmox adapter against Proxmox VE outputs (fixtures/pve, see its README for their provenance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, ProxmoxError
from ansible_collections.ironclaw.sealed.plugins.module_utils._pve.cli import ProxmoxCli, VmInfo
from ansible_collections.ironclaw.sealed.plugins.module_utils._pve.config import (
    parse_api_config,
    parse_meta,
    parse_qm_config,
    parse_smbios1,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._pve.resources import (
    find_guest,
    parse_cluster_resources,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pve"
RECORDINGS = json.loads((FIXTURES / "recordings.json").read_text())

RESOURCES = ("pvesh", "get", "/cluster/resources", "--type", "vm", "--output-format", "json")


def recording(name: str) -> tuple[int, str, str]:
    """(rc, stdout, stderr) of a recorded command."""

    def text(suffix: str) -> str:
        path = FIXTURES / f"{name}.{suffix}"
        return path.read_text() if path.exists() else ""

    return RECORDINGS[name]["rc"], text("stdout"), text("stderr")


def command(name: str) -> tuple[str, ...]:
    return tuple(RECORDINGS[name]["command"].split())


class Replay:
    """A runner that answers each expected argv with a recording; any other command fails the test."""

    def __init__(self, *answers: tuple[tuple[str, ...], str]):
        self.answers: dict = {}
        for argv, name in answers:
            self.answers.setdefault(tuple(argv), []).append(name)
        self.calls: list[list[str]] = []

    def __call__(self, argv):
        assert all(isinstance(arg, str) for arg in argv), f"argv must be a list of strings: {argv!r}"
        self.calls.append(list(argv))
        queue = self.answers.get(tuple(argv))
        assert queue, f"unexpected command {argv}"
        name = queue.pop(0) if len(queue) > 1 else queue[0]
        return recording(name)


def cli(*answers) -> tuple[ProxmoxCli, Replay]:
    replay = Replay(*answers)
    return ProxmoxCli(replay, node="pve1"), replay


def test_recordings_have_their_files():
    for name in RECORDINGS:
        assert any((FIXTURES / f"{name}.{suffix}").exists() for suffix in ("stdout", "stderr")), name


# -- config --------------------------------------------------------------------


def test_qm_config_gives_identity_and_creation_time():
    options = parse_qm_config(recording("qm_config_100")[1], 100)
    assert options["name"] == "ironclaw-agent-1"
    assert options["boot"] == "order=scsi0;ide2;net0"
    assert parse_smbios1(options["smbios1"]).uuid == "6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f"
    meta = parse_meta(options["meta"])
    assert (meta.ctime, meta.creation_qemu) == (1718000000, "8.1.5")


def test_qm_config_without_smbios1_and_meta():
    options = parse_qm_config(recording("qm_config_101_no_smbios1")[1], 101)
    assert "smbios1" not in options and "meta" not in options
    assert options["ide0"] == "local:101/vm-101-disk-1.qcow2,size=8G"


def test_smbios1_base64_fields_are_decoded_and_uuid_lowercased():
    options = parse_qm_config(recording("qm_config_102_base64")[1], 102)
    smbios1 = parse_smbios1(options["smbios1"])
    assert smbios1.uuid == "0f0e0d0c-0b0a-4909-8807-0605040302ab"
    assert smbios1.base64 is True
    assert smbios1.fields == {"manufacturer": "IronClaw", "product": "Agent VM", "serial": "0001-AB"}
    assert options["description"] == "IronClaw agent%3A build 42%0Aowner ops"


def test_smbios1_text_fields_without_base64_flag_are_kept_as_is():
    smbios1 = parse_smbios1("manufacturer=QEMU,uuid=6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f")
    assert smbios1.fields == {"manufacturer": "QEMU"} and smbios1.base64 is False


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("uuid=6f1c2a4e9b7d4c1a8e2f0a1b2c3d4e5f", "is not in the form"),
        ("uuid=6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f,uuid=0f0e0d0c-0b0a-4909-8807-0605040302ab", "appears twice"),
        ("6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f", "is not a key=value item"),
        ("uuid=6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f,,", "is not a key=value item"),
        ("base64=1,serial=not base64!,uuid=6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f", "is not base64"),
        ("base64=1,serial=QUI,uuid=6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f", "does not decode"),
        ("base64=yes,uuid=6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f", "base64 must be 0 or 1"),
    ],
)
def test_smbios1_malformed_is_refused(value, message):
    with pytest.raises(ProxmoxError, match=message):
        parse_smbios1(value)


def test_smbios1_without_uuid_parses_to_none():
    assert parse_smbios1("manufacturer=QEMU").uuid is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("creation-qemu=8.1.5,ctime=-1", "ctime must be a Unix time"),
        ("creation-qemu=8.1.5,ctime=17e8", "ctime must be a Unix time"),
        ("creation-qemu=eight,ctime=1718000000", "creation-qemu must be a version"),
        ("ctime=1,ctime=2", "appears twice"),
    ],
)
def test_meta_malformed_is_refused(value, message):
    with pytest.raises(ProxmoxError, match=message):
        parse_meta(value)


def test_meta_without_ctime():
    assert parse_meta("creation-qemu=6.1.0").ctime is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: a\nname: b\n", "appears twice"),
        ("name: a\nUSAGE: qm config <vmid>\n", "line 2 is not 'key: value'"),
        ("[snapshot1]\n", "line 1 is not 'key: value'"),
    ],
)
def test_qm_config_that_is_not_a_config_is_refused(text, message):
    with pytest.raises(ProxmoxError, match=message):
        parse_qm_config(text, 100)


def test_api_config_drops_digest_and_stringifies_numbers():
    options = parse_api_config(json.loads(recording("pvesh_config_pve2_103")[1]), 103)
    assert "digest" not in options
    assert options["cores"] == "1" and options["memory"] == "1024"


@pytest.mark.parametrize("data", [[], {"cores": [1]}, {"Bad Key": "x"}, {"acpi": True}])
def test_api_config_unexpected_shapes_are_refused(data):
    with pytest.raises(ProxmoxError):
        parse_api_config(data, 103)


# -- cluster resources -----------------------------------------------------------


def test_cluster_resources_lists_guests_in_proxmox_order():
    guests = parse_cluster_resources(recording("pvesh_cluster_resources_vm")[1])
    assert [(g.vmid, g.type, g.node, g.status) for g in guests] == [
        (100, "qemu", "pve1", "running"),
        (1000, "qemu", "pve2", "stopped"),
        (101, "qemu", "pve1", "stopped"),
        (102, "qemu", "pve1", "stopped"),
        (103, "qemu", "pve2", "running"),
        (200, "lxc", "pve3", "running"),
    ]
    assert find_guest(guests, 103).name == "ironclaw-agent-3"
    assert find_guest(guests, 104) is None


def test_cluster_resources_skips_pools_nodes_storage_and_sdn():
    guests = parse_cluster_resources(recording("pvesh_cluster_resources_all")[1])
    assert [(g.vmid, g.node) for g in guests] == [(100, "pve1")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "did not print JSON"),
        ('{"data": []}', "expected an array"),
        ('["qemu/100"]', "is not an object"),
        ('[{"id": "qemu/100", "type": "qemu", "node": "pve1"}]', "without vmid or node"),
        ('[{"id": "qemu/100", "type": "qemu", "vmid": "100", "node": "pve1"}]', "without vmid or node"),
        ('[{"id": "qemu/101", "type": "qemu", "vmid": 100, "node": "pve1"}]', "does not match vmid 100"),
    ],
)
def test_cluster_resources_malformed_is_refused(text, message):
    with pytest.raises(ProxmoxError, match=message):
        parse_cluster_resources(text)


def test_duplicate_vmid_in_cluster_resources_is_refused():
    entry = '{"id": "qemu/100", "type": "qemu", "vmid": 100, "node": "%s", "status": "stopped"}'
    guests = parse_cluster_resources(f"[{entry % 'pve1'}, {entry % 'pve2'}]")
    with pytest.raises(ProxmoxError, match="lists VMID 100 2 times"):
        find_guest(guests, 100)


# -- reading a VM ----------------------------------------------------------------


def test_vm_info_of_a_running_vm_on_this_node():
    proxmox, replay = cli(
        (RESOURCES, "pvesh_cluster_resources_vm"),
        (command("qm_config_100"), "qm_config_100"),
        (command("qm_status_running"), "qm_status_running"),
    )
    info = proxmox.vm_info(100)
    assert info == VmInfo(
        vmid=100,
        exists=True,
        node="pve1",
        uuid="6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f",
        ctime=1718000000,
        status="running",
    )
    assert info.to_result()["uuid"] == "6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f"
    assert replay.calls[0] == list(RESOURCES)


def test_vm_info_of_a_vm_on_another_node_reads_its_config_through_the_api():
    proxmox, replay = cli(
        (RESOURCES, "pvesh_cluster_resources_vm"), (command("pvesh_config_pve2_103"), "pvesh_config_pve2_103")
    )
    info = proxmox.vm_info(103)
    assert (info.node, info.uuid, info.ctime, info.status) == (
        "pve2",
        "a4ce5cab-f4df-4bde-a19b-6b9f3ebbaddb",
        1719000000,
        "running",
    )
    assert not any(call[0] == "qm" for call in replay.calls), "qm only knows this node's VMs"


def test_vm_info_of_a_missing_vm():
    proxmox, replay = cli((RESOURCES, "pvesh_cluster_resources_vm"))
    assert proxmox.vm_info(104) == VmInfo(vmid=104, exists=False)
    assert replay.calls == [list(RESOURCES)]
    with pytest.raises(ProxmoxError, match="VM 104 does not exist in this cluster"):
        proxmox.require_vm(104)


def test_vm_info_without_smbios1_uuid_is_an_error_naming_the_fix():
    proxmox, _replay = cli(
        (RESOURCES, "pvesh_cluster_resources_vm"), (command("qm_config_101_no_smbios1"), "qm_config_101_no_smbios1")
    )
    with pytest.raises(ProxmoxError, match=r"VM 101 on node pve1 has no smbios1 uuid.*qm set 101 --smbios1 uuid="):
        proxmox.vm_info(101)


def test_vm_info_of_a_container_is_refused():
    proxmox, _replay = cli((RESOURCES, "pvesh_cluster_resources_vm"))
    with pytest.raises(ProxmoxError, match="VMID 200 is a lxc container on node pve3, not a QEMU VM"):
        proxmox.vm_info(200)


def test_config_missing_on_this_node_says_so():
    proxmox, _replay = cli((command("qm_config_missing"), "qm_config_missing"))
    with pytest.raises(ProxmoxError, match=r"VM 105 is not on node pve1.*does not exist"):
        proxmox.config(105)


@pytest.mark.parametrize(("name", "status"), [("qm_status_running", "running"), ("qm_status_stopped", "stopped")])
def test_status(name, status):
    proxmox, _replay = cli((command(name), name))
    assert proxmox.status(int(command(name)[-1])) == status


def test_status_output_that_is_not_a_status_is_refused():
    proxmox = ProxmoxCli(lambda argv: (0, "status: running\nextra\n", ""), node="pve1")
    with pytest.raises(ProxmoxError, match="expected 'status: <state>'"):
        proxmox.status(100)


@pytest.mark.parametrize("vmid", [99, 0, "100 ; reboot", True])
def test_bad_vmid_never_reaches_a_command(vmid):
    proxmox, replay = cli()
    with pytest.raises(InputError):
        proxmox.vm_info(vmid)
    assert replay.calls == []


# -- changing a VM -----------------------------------------------------------------


def test_start_of_a_stopped_vm():
    proxmox, replay = cli((("qm", "status", "102"), "qm_status_stopped"), (command("qm_start"), "qm_start"))
    assert proxmox.start(102) is True
    assert replay.calls[-1] == ["qm", "start", "102"]


def test_start_of_a_running_vm_changes_nothing():
    proxmox, replay = cli((("qm", "status", "100"), "qm_status_running"))
    assert proxmox.start(100) is False
    assert ["qm", "start", "100"] not in replay.calls


def test_start_refused_by_the_pre_start_hookscript_reports_it():
    proxmox, _replay = cli(
        (("qm", "status", "100"), "qm_status_stopped"),
        (command("qm_start_hookscript_refused"), "qm_start_hookscript_refused"),
    )
    with pytest.raises(ProxmoxError) as err:
        proxmox.start(100)
    assert "hookscript error for 100 on pre-start" in str(err.value)
    assert "exit code 1" in str(err.value) and "(exit 255)" in str(err.value)


def test_start_failure_race_already_running():
    proxmox, _replay = cli(
        (("qm", "status", "100"), "qm_status_stopped"),
        (command("qm_start_already_running"), "qm_start_already_running"),
    )
    with pytest.raises(ProxmoxError, match="VM 100 already running"):
        proxmox.start(100)


def test_shutdown_of_a_stopped_vm_does_nothing():
    proxmox, replay = cli((("qm", "status", "102"), "qm_status_stopped"))
    assert proxmox.shutdown(102, timeout=30) == "already stopped"
    assert len(replay.calls) == 1


def test_shutdown_that_completes():
    proxmox, replay = cli((("qm", "status", "100"), "qm_status_running"), (command("qm_shutdown"), "qm_shutdown"))
    assert proxmox.shutdown(100, timeout=30) == "shut down"
    assert ["qm", "stop", "100"] not in replay.calls


def test_shutdown_that_times_out_then_stops():
    proxmox, replay = cli(
        (("qm", "status", "100"), "qm_status_running"),
        (("qm", "status", "100"), "qm_status_running"),
        (command("qm_shutdown_timeout"), "qm_shutdown_timeout"),
        (command("qm_stop"), "qm_stop"),
    )
    assert proxmox.shutdown(100, timeout=30) == "stopped"
    assert replay.calls[-1] == ["qm", "stop", "100"]


def test_shutdown_then_stop_failing_reports_both():
    proxmox, _replay = cli(
        (("qm", "status", "100"), "qm_status_running"),
        (command("qm_shutdown_timeout"), "qm_shutdown_timeout"),
        (command("qm_stop_locked"), "qm_stop_locked"),
    )
    with pytest.raises(ProxmoxError, match=r"got timeout.*then.*VM is locked \(backup\)"):
        proxmox.shutdown(100, timeout=30)


@pytest.mark.parametrize("timeout", [-1, 1.5, "30", True])
def test_shutdown_timeout_must_be_whole_seconds(timeout):
    proxmox, replay = cli()
    with pytest.raises(ProxmoxError, match="whole number of seconds"):
        proxmox.shutdown(100, timeout=timeout)
    assert replay.calls == []


def test_migrate_offline_returns_the_task_log():
    proxmox, replay = cli((command("qm_migrate_offline"), "qm_migrate_offline"))
    log = proxmox.migrate(102, "pve2")
    assert "migration finished successfully" in log
    assert replay.calls == [["qm", "migrate", "102", "pve2"]]


def test_migrate_online_passes_the_flag():
    proxmox, replay = cli((("qm", "migrate", "100", "pve2", "--online"), "qm_migrate_offline"))
    proxmox.migrate(100, "pve2", online=True)
    assert replay.calls == [["qm", "migrate", "100", "pve2", "--online"]]


@pytest.mark.parametrize(
    ("name", "vmid", "target", "message"),
    [
        ("qm_migrate_running", 100, "pve2", "can't migrate running VM without --online"),
        ("qm_migrate_no_such_node", 102, "pve9", "no such cluster node 'pve9'"),
        ("qm_migrate_not_here", 103, "pve3", "VM 103 is not on node pve1"),
    ],
)
def test_migrate_errors_carry_proxmox_message(name, vmid, target, message):
    proxmox, _replay = cli((command(name), name))
    with pytest.raises(ProxmoxError, match=message):
        proxmox.migrate(vmid, target)


def test_migrate_to_this_node_is_refused_before_asking_proxmox():
    proxmox, replay = cli()
    with pytest.raises(ProxmoxError, match="that is the node it is on"):
        proxmox.migrate(102, "pve1")
    assert replay.calls == []
    # Proxmox's own refusal, should a caller get there anyway.
    other, _replay = cli((command("qm_migrate_local_node"), "qm_migrate_local_node"))
    other.node = "elsewhere"
    with pytest.raises(ProxmoxError, match="target is local node"):
        other.migrate(102, "pve1")


@pytest.mark.parametrize("target", ["pve2; reboot", "", "-online", None])
def test_migrate_target_must_be_a_node_name(target):
    proxmox, replay = cli()
    with pytest.raises(ProxmoxError, match="not a valid Proxmox node name"):
        proxmox.migrate(102, target)
    assert replay.calls == []


def test_set_hookscript():
    proxmox, replay = cli(
        (command("qm_config_102_no_hookscript"), "qm_config_102_no_hookscript"),
        (command("qm_set_hookscript"), "qm_set_hookscript"),
    )
    assert proxmox.set_hookscript(102, "local:snippets/ironclaw-hook") is True
    assert replay.calls[-1] == ["qm", "set", "102", "--hookscript", "local:snippets/ironclaw-hook"]


def test_set_hookscript_already_set_changes_nothing():
    proxmox, replay = cli((command("qm_config_102_base64"), "qm_config_102_base64"))
    assert proxmox.set_hookscript(102, "local:snippets/ironclaw-hook") is False
    assert len(replay.calls) == 1


def test_remove_hookscript():
    proxmox, replay = cli(
        (command("qm_config_102_base64"), "qm_config_102_base64"),
        (command("qm_set_delete_hookscript"), "qm_set_delete_hookscript"),
    )
    assert proxmox.set_hookscript(102, None) is True
    assert replay.calls[-1] == ["qm", "set", "102", "--delete", "hookscript"]


def test_set_hookscript_that_does_not_exist_reports_proxmox_message():
    proxmox, _replay = cli(
        (command("qm_config_102_no_hookscript"), "qm_config_102_no_hookscript"),
        (command("qm_set_hookscript_missing"), "qm_set_hookscript_missing"),
    )
    with pytest.raises(ProxmoxError, match="script 'local:snippets/ironclaw-hook' does not exist"):
        proxmox.set_hookscript(102, "local:snippets/ironclaw-hook")


@pytest.mark.parametrize(
    "volid", ["/var/lib/vz/snippets/hook", "local:iso/hook.iso", "local:snippets/a/b", "x y:snippets/z"]
)
def test_hookscript_must_be_a_snippets_volume(volid):
    proxmox, replay = cli()
    with pytest.raises(ProxmoxError, match="must be a snippets volume"):
        proxmox.set_hookscript(102, volid)
    assert replay.calls == []
