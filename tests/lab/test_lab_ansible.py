"""ironclaw_node over SSH against lab nodes: Debian's python3, each node's own swtpm, the qm/pvesh simulator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".build" / "collections"
# The venv's tools sit next to the interpreter that runs pytest.
ANSIBLE = Path(sys.executable).parent / "ansible"
VM_UUID = "0f0e0d0c-0b0a-4909-8807-0605040302ab"
_RESULT = re.compile(r"^(?P<host>\S+) \| (?P<status>SUCCESS|CHANGED|FAILED!|UNREACHABLE!) => ", re.MULTILINE)


@pytest.fixture(scope="module")
def ansible(lab_session, tmp_path_factory):
    """``ansible(pattern, module_args) -> {host: (status, result)}`` with the lab's own inventory."""
    if not ANSIBLE.exists():
        pytest.skip(f"{ANSIBLE} not found: run the tests with the venv's python (make bootstrap)")
    root = tmp_path_factory.mktemp("ansible")
    inventory = root / "inventory.yml"
    inventory.write_text(lab_session.cli("inventory").stdout)
    config = root / "ansible.cfg"
    config.write_text("")
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_CONFIG=str(config),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCAL_TEMP=str(root / "tmp"),
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(root / "cp"),
        ANSIBLE_RETRY_FILES_ENABLED="0",
    )

    def run(pattern: str, args: dict) -> dict:
        module = ["-m", "ironclaw.sealed.ironclaw_node", "-a", json.dumps(args)]
        argv = [str(ANSIBLE), pattern, "-i", str(inventory), *module]
        proc = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True, timeout=120, check=False)
        results = {}
        for match in _RESULT.finditer(proc.stdout):
            results[match["host"]] = (match["status"], json.JSONDecoder().raw_decode(proc.stdout, match.end())[0])
        assert results, f"no results (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return results

    return run


def test_state_present_provisions_each_nodes_own_tpm_over_ssh(ansible):
    args = {"state": "present", "tcti": "{{ ironclaw_tcti }}"}
    first = ansible("pve1:pve2", args)
    assert {host: status for host, (status, _result) in first.items()} == {"pve1": "CHANGED", "pve2": "CHANGED"}
    for _status, result in first.values():
        assert result["provisioned"] is True and result["backend"] == "tpm2" and isinstance(result["epoch"], int)
    # The same TCTI string reaches a different TPM on each node.
    assert first["pve1"][1]["srk_public"] != first["pve2"][1]["srk_public"]

    again = ansible("pve1", args)
    status, result = again["pve1"]
    assert status == "SUCCESS" and result["changed"] is False and result["actions"] == []
    assert result["srk_name"] == first["pve1"][1]["srk_name"]


def test_pve_reports_the_vm_from_the_simulator(ansible, lab_session):
    lab_session.qm(2, "create", "9100", "--name", "agent", "--smbios1", f"uuid={VM_UUID}")
    ctime = int(lab_session.qm(2, "config", "9100").stdout.split("ctime=")[1].split()[0])
    results = ansible("pve1:pve2", {"pve": True, "vmid": 9100, "tcti": "{{ ironclaw_tcti }}"})
    for host in ("pve1", "pve2"):
        status, result = results[host]
        assert status == "SUCCESS" and result["changed"] is False
        assert result["vm"] == {
            "vmid": 9100,
            "exists": True,
            "node": "pve2",
            "uuid": VM_UUID,
            "ctime": ctime,
            "status": "stopped",
        }


def test_pve_reports_a_missing_vm_as_absent(ansible):
    status, result = ansible("pve3", {"pve": True, "vmid": 9199, "tcti": "{{ ironclaw_tcti }}"})["pve3"]
    assert status == "SUCCESS"
    assert result["vm"] == {"vmid": 9199, "exists": False, "node": None, "uuid": None, "ctime": None, "status": None}


def test_pve_refuses_a_vm_without_smbios1_uuid(ansible, lab_session):
    lab_session.qm(3, "create", "9101")
    lab_session.qm(3, "set", "9101", "--delete", "smbios1")
    status, result = ansible("pve3", {"pve": True, "vmid": 9101, "tcti": "{{ ironclaw_tcti }}"})["pve3"]
    assert status == "FAILED!"
    assert "VM 9101 on node pve3 has no smbios1 uuid" in result["msg"]
    assert result["error"] == "ProxmoxError"
