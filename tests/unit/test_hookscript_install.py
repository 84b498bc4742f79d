"""ironclaw_hookscript's node side: the snippet, the node record and the VM's hookscript option, with check mode,
diff and idempotence; Proxmox answers from fixtures/pve (VM 102 on pve1)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

pytest.importorskip("ansible", reason="the module's option set comes from ansible-core (controller venv)")

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.hookscript_states import (  # noqa: E402
    argument_spec,
    hookscript_state,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (  # noqa: E402
    BackendError,
    FormatError,
    InputError,
    ProxmoxError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._hook.node_record import read_node_id  # noqa: E402
from ansible_collections.ironclaw.sealed.plugins.module_utils._pve.cli import ProxmoxCli  # noqa: E402
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.hookscript import build_hookscript  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pve"
NODE_ID = "000b" + "5a" * 32
SCRIPT = build_hookscript({"state_dir": "/var/lib/ironclaw", "cluster": "lab"})


class Proxmox:
    """VM 102 on pve1 as the recordings show it, with or without a hookscript; records what was run."""

    def __init__(self, config: str):
        self.answers = {
            ("qm", "config", "102", "--current"): config,
            ("qm", "set", "102", "--hookscript", "local:snippets/ironclaw-hook"): "qm_set_hookscript",
            ("qm", "set", "102", "--delete", "hookscript"): "qm_set_delete_hookscript",
            ("pvesh", "get", "/cluster/resources", "--type", "vm", "--output-format", "json"): (
                "pvesh_cluster_resources_vm"
            ),
        }
        self.calls: list[tuple[str, ...]] = []
        self.cli = ProxmoxCli(self, node="pve1")

    def __call__(self, argv):
        name = self.answers.get(tuple(argv))
        if name is None and argv[:2] == ["qm", "config"]:
            name = "qm_config_100"  # the other VMs of pve1, for the users of a snippet
        assert name is not None, f"unexpected command {argv}"
        self.calls.append(tuple(argv))
        rc = json.loads((FIXTURES / "recordings.json").read_text())[name]["rc"]
        out, err = (FIXTURES / f"{name}.{suffix}" for suffix in ("stdout", "stderr"))
        return rc, out.read_text() if out.exists() else "", err.read_text() if err.exists() else ""

    @property
    def changes(self) -> list[tuple[str, ...]]:
        return [call for call in self.calls if call[1] == "set"]


def params(tmp_path, **changes) -> dict:
    p = argument_spec().defaults()
    p.update(
        state_dir=str(tmp_path / "state"),
        snippets_dir=str(tmp_path / "snippets"),
        content=base64.b64encode(SCRIPT).decode(),
    )
    p.update(changes)
    return p


def test_present_writes_the_snippet_executable_then_changes_nothing(tmp_path):
    p = params(tmp_path, node_name=NODE_ID.upper())
    planned = hookscript_state(p, True, None)
    assert planned["changed"] is True and not os.path.exists(planned["path"])
    first = hookscript_state(p, False, None)
    assert first == {**planned, "diff": first["diff"]}
    assert first["path"] == str(tmp_path / "snippets" / "ironclaw-prestart.pyz")
    assert first["volid"] == "local:snippets/ironclaw-prestart.pyz" and first["attached"] is None
    assert Path(first["path"]).read_bytes() == SCRIPT
    assert stat.S_IMODE(os.stat(first["path"]).st_mode) == 0o755
    assert read_node_id(p["state_dir"]) == NODE_ID
    assert first["diff"] == {
        "before": {"snippet_sha256": None, "node_id": None},
        "after": {"snippet_sha256": hashlib.sha256(SCRIPT).hexdigest(), "node_id": NODE_ID},
    }
    again = hookscript_state(p, False, None)
    assert again["changed"] is False and again["diff"]["before"] == again["diff"]["after"]


def test_present_rewrites_other_bytes_and_a_wrong_mode(tmp_path):
    p = params(tmp_path)
    path = Path(hookscript_state(p, False, None)["path"])
    path.chmod(0o644)
    assert hookscript_state(p, False, None)["changed"] is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    path.write_bytes(b"#!/bin/sh\nexit 0\n")
    assert hookscript_state(p, False, None)["changed"] is True
    assert path.read_bytes() == SCRIPT


def test_present_without_content_is_refused(tmp_path):
    with pytest.raises(InputError, match="content is set by the action plugin"):
        hookscript_state(params(tmp_path, content=None), False, None)


def test_vmid_needs_proxmox(tmp_path):
    with pytest.raises(InputError, match="vmid needs pve=true"):
        hookscript_state(params(tmp_path, vmid=102, pve=False), False, None)


def test_attach_to_a_vm_without_hookscript(tmp_path):
    p = params(tmp_path, vmid=102, file="ironclaw-hook")
    proxmox = Proxmox("qm_config_102_no_hookscript")
    planned = hookscript_state(p, True, proxmox.cli)
    assert (planned["changed"], planned["attached"], proxmox.changes) == (True, True, [])
    result = hookscript_state(p, False, proxmox.cli)
    assert result["changed"] is True and result["attached"] is True
    assert proxmox.changes == [("qm", "set", "102", "--hookscript", "local:snippets/ironclaw-hook")]
    assert result["diff"]["before"]["hookscript"] is None
    assert result["diff"]["after"]["hookscript"] == "local:snippets/ironclaw-hook"


def test_attached_already_changes_nothing(tmp_path):
    p = params(tmp_path, vmid=102, file="ironclaw-hook")
    hookscript_state(params(tmp_path, file="ironclaw-hook"), False, None)
    proxmox = Proxmox("qm_config_102_base64")  # has hookscript: local:snippets/ironclaw-hook
    result = hookscript_state(p, False, proxmox.cli)
    assert (result["changed"], result["attached"], proxmox.changes) == (False, True, [])


def test_another_hookscript_is_refused_not_overwritten(tmp_path):
    proxmox = Proxmox("qm_config_102_base64")
    with pytest.raises(ProxmoxError, match="VM 102 already has the hookscript local:snippets/ironclaw-hook"):
        hookscript_state(params(tmp_path, vmid=102), False, proxmox.cli)
    assert proxmox.changes == []


def test_absent_detaches_only_our_hookscript(tmp_path):
    ours = Proxmox("qm_config_102_base64")
    result = hookscript_state(params(tmp_path, state="absent", vmid=102, file="ironclaw-hook"), False, ours.cli)
    assert (result["changed"], result["attached"]) == (True, False)
    assert ours.changes == [("qm", "set", "102", "--delete", "hookscript")]
    theirs = Proxmox("qm_config_102_base64")
    result = hookscript_state(params(tmp_path, state="absent", vmid=102), False, theirs.cli)
    assert (result["changed"], result["attached"], theirs.changes) == (False, False, [])


def test_absent_removes_snippet_and_node_record_unless_a_vm_uses_it(tmp_path):
    p = params(tmp_path, file="ironclaw-hook", node_name=NODE_ID)
    path = Path(hookscript_state(p, False, None)["path"])
    absent = {**p, "state": "absent", "content": None}
    with pytest.raises(InputError, match="VM\\(s\\) 102 on this node still use local:snippets/ironclaw-hook"):
        hookscript_state(absent, False, Proxmox("qm_config_102_base64").cli)
    assert path.exists()
    assert hookscript_state(absent, True, Proxmox("qm_config_102_no_hookscript").cli)["changed"] is True
    assert path.exists()
    assert hookscript_state(absent, False, Proxmox("qm_config_102_no_hookscript").cli)["changed"] is True
    assert not path.exists() and read_node_id(p["state_dir"]) is None
    assert hookscript_state(absent, False, None)["changed"] is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"file": "../x"}, "file must be a plain file name"),
        ({"storage": "local:x"}, "storage must be a Proxmox storage name"),
        ({"node_name": "00"}, "node_name: expected lowercase hex of exactly 34 bytes"),
        ({"content": "not base64!"}, "content: expected base64"),
        ({"node_name": NODE_ID, "backend": "software"}, "give node_name or backend, not both"),
    ],
)
def test_bad_options_are_refused(tmp_path, change, message):
    with pytest.raises((InputError, FormatError), match=message):
        hookscript_state(params(tmp_path, **change), False, None)
    assert not os.path.exists(tmp_path / "snippets")


@pytest.mark.swtpm
def test_present_with_backend_records_the_tpms_srk_name_0600_and_check_mode_writes_nothing(tmp_path, swtpm):
    pytest.importorskip("tpm2_pytss")
    from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode  # noqa: PLC0415

    with TpmNode(swtpm.tcti) as tpm:
        tpm.provision()
        srk_name = tpm.name(tpm.srk()).hex()
    p = params(tmp_path, backend="tpm2", tcti=swtpm.tcti)
    planned = hookscript_state(p, True, None)
    assert planned["diff"]["after"]["node_id"] == srk_name and read_node_id(p["state_dir"]) is None
    assert hookscript_state(p, False, None)["changed"] is True
    assert read_node_id(p["state_dir"]) == srk_name
    record = Path(p["state_dir"]) / "hook" / "node.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    record.chmod(0o644)
    assert hookscript_state(p, False, None)["changed"] is True
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert hookscript_state(p, False, None)["changed"] is False


def test_present_with_backend_on_a_node_not_enrolled_is_refused(tmp_path):
    p = params(tmp_path, backend="software")
    with pytest.raises(BackendError):
        hookscript_state(p, False, None)
    assert not os.path.exists(tmp_path / "snippets") and read_node_id(p["state_dir"]) is None
