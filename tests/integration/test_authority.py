"""The controller signs only what the VM's ledger allows, through the playbooks (DESIGN §7 A1, A2):
a revoked copy put back from a backup stays revoked when its node's epoch is bumped again, and the PCR
selection a VM was provisioned with survives its migration."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import pytest
from playbook_rig import vm_uuid_of
from test_migrate import NEIGHBOUR, VMID, history, migrate, two_nodes, unsealed

pytestmark = pytest.mark.swtpm

PCR_VM = 302
PCR_UUID = vm_uuid_of("nodeA", PCR_VM)
PCR = 16  # the debug PCR: extendable (and resettable) by anyone, nothing else uses it


@pytest.fixture
def lab(tmp_path, playbook_tools):
    # pytest closes the fixture's generator, which exits the context
    # pylint: disable-next=contextmanager-generator-missing-cleanup
    with two_nodes(tmp_path) as made:
        yield made


def test_revoked_copy_put_back_is_not_re_approved_by_another_vms_decommission(lab, tmp_path):
    """Point 1: X moves A -> B; A's old copy of X comes back from a backup; a decommission on A bumps its
    epoch again: the controller re-approves the neighbour only, so the old copy stays dead and X works on B."""
    lab.provision("nodeA", NEIGHBOUR)
    saved = tmp_path / "backup-of-x-on-a"
    shutil.copytree(lab.vm_dir("nodeA", VMID), saved)
    migrate(lab)
    shutil.copytree(saved, lab.vm_dir("nodeA", VMID))
    restored_approval = (lab.vm_dir("nodeA", VMID) / "approval.json").read_bytes()

    done = lab.run("decommission", "-e", f"ironclaw_vmid={NEIGHBOUR}")

    assert "not re-approved" in done.stdout, "the refused keyslot is reported"
    assert (lab.vm_dir("nodeA", VMID) / "approval.json").read_bytes() == restored_approval, (
        "the controller signed nothing for the copy the ledger does not place on nodeA"
    )
    unsealed(lab, "nodeA", tmp_path, expect_fail=True)
    assert unsealed(lab, "nodeB", tmp_path) == lab.plaintexts


def _extend_pcr(tcti: str) -> None:
    subprocess.run(
        ["tpm2_pcrextend", f"{PCR}:sha256=" + "ab" * 32],
        env={**os.environ, "TPM2TOOLS_TCTI": tcti, "TSS2_LOG": "all+NONE"},
        check=True,
        capture_output=True,
    )


def test_pcr_binding_survives_migration(lab, tmp_path):
    """Point 4: the migrated VM's approval on the target binds the PCR selection it was provisioned with."""
    policy = json.dumps({"ironclaw_policy": f"migratable=true;pcrs=sha256:{PCR}"})
    lab.provision("nodeA", PCR_VM, extra=("-e", policy))
    args = ["-e", f"ironclaw_vmid={PCR_VM}", "-e", f"ironclaw_vm_uuid={PCR_UUID}"]
    lab.run("migrate", *args, "-e", "ironclaw_source=nodeA", "-e", "ironclaw_target=nodeB")

    chain = [
        json.loads(base64.b64decode(json.loads(p.read_text())["payload"])) for p in lab.store_chain("nodeA", PCR_VM)
    ]
    assert [m["policy"]["pcrs"] for m in chain] == [f"sha256:{PCR}"] * 2, "every version records the selection"
    assert chain[-1]["node"]["name"] == "nodeB"
    approval = json.loads((lab.vm_dir("nodeB", PCR_VM) / "approval.json").read_text())
    assert approval["pcrs"]["selection"] == f"sha256:{PCR}"
    assert unsealed(lab, "nodeB", tmp_path, vmid=PCR_VM, uuid=PCR_UUID) == lab.plaintexts

    _extend_pcr(lab.nodes["nodeB"].tcti)
    unsealed(lab, "nodeB", tmp_path, vmid=PCR_VM, uuid=PCR_UUID, expect_fail=True)


def test_store_records_the_policy_and_migration_keeps_it(lab):
    """The first manifest records the provisioned policy; the migration's version keeps it."""
    migrate(lab)
    assert [m["policy"] for m in history(lab)] == [{"migratable": True, "pcrs": None}] * 2


def test_unsealed_refuses_an_older_generation_and_writes_nothing(lab, tmp_path):
    """A9: an older generation of a blob put back from a backup is refused by state=unsealed (the node's cached
    manifest and floor name the newer one) before anything is written to dest."""
    older = lab.blob("nodeA", VMID, "api-token").read_bytes()
    rotated = lab.write_secrets(
        "rotated.json",
        [
            {"name": "master-key", "src": str(lab.big_path)},
            {"name": "db-pass", "src": str(lab.text_path)},
            {"name": "api-token", "content": "rotated-on-nodeA"},
        ],
    )
    lab.run("provision", *lab.vm_args("nodeA", VMID, secrets_file=rotated))
    newer = lab.blob("nodeA", VMID, "api-token").read_bytes()
    assert newer != older
    lab.blob("nodeA", VMID, "api-token").write_bytes(older)

    dest = tmp_path / "out-rolled-back"
    done = lab.unseal("nodeA", VMID, dest, expect_fail=True)
    assert "api-token" in done.stdout and ("generation" in done.stdout or "manifest" in done.stdout), done.stdout
    assert not dest.exists() or not any(dest.iterdir()), "nothing was written"
    assert lab.blob("nodeA", VMID, "api-token").read_bytes() == older, "the refused blob is left for inspection"

    lab.blob("nodeA", VMID, "api-token").write_bytes(newer)
    assert unsealed(lab, "nodeA", tmp_path) == {**lab.plaintexts, "api-token": b"rotated-on-nodeA"}


def _survivor_binds_quoted_pcrs(lab, tmp_path, before: bytes) -> None:
    """PCR_VM stayed on nodeA through an epoch bump: its new approval binds the selection from a quote, it unseals,
    and no longer once the PCR moves."""
    after = (lab.vm_dir("nodeA", PCR_VM) / "approval.json").read_bytes()
    assert after != before, "the epoch bump needed a new approval"
    approval = json.loads(after)
    assert approval["pcrs"]["selection"] == f"sha256:{PCR}" and len(approval["pcrs"]["digest"]) == 64
    assert unsealed(lab, "nodeA", tmp_path, vmid=PCR_VM, uuid=PCR_UUID) == lab.plaintexts
    _extend_pcr(lab.nodes["nodeA"].tcti)
    unsealed(lab, "nodeA", tmp_path, vmid=PCR_VM, uuid=PCR_UUID, expect_fail=True)


def test_pcr_bound_survivor_of_a_migration_is_reapproved_from_a_quote(lab, tmp_path):
    """DESIGN §8: the source's revocation run quotes the survivor's selection right after the bump; the controller
    verifies it with the AK of nodeA's signed record before it signs the new approval."""
    policy = json.dumps({"ironclaw_policy": f"migratable=true;pcrs=sha256:{PCR}"})
    lab.provision("nodeA", PCR_VM, extra=("-e", policy))
    before = (lab.vm_dir("nodeA", PCR_VM) / "approval.json").read_bytes()
    migrate(lab)
    _survivor_binds_quoted_pcrs(lab, tmp_path, before)


def test_pcr_bound_survivor_of_a_decommission_is_reapproved_from_a_quote(lab, tmp_path):
    policy = json.dumps({"ironclaw_policy": f"migratable=true;pcrs=sha256:{PCR}"})
    lab.provision("nodeA", PCR_VM, extra=("-e", policy))
    lab.provision("nodeA", NEIGHBOUR)
    before = (lab.vm_dir("nodeA", PCR_VM) / "approval.json").read_bytes()
    lab.run("decommission", "-e", f"ironclaw_vmid={NEIGHBOUR}")
    _survivor_binds_quoted_pcrs(lab, tmp_path, before)
