# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ceilings on the TPM commands each lifecycle step sends (DESIGN.md §6: per VM, never per secret).

Every step runs as one module run does: it opens its own TPM context, so the
node lookups a task repeats are counted too. The counter (tests/rig/counter.py)
sees every command that reaches the swtpm. Counts are deterministic, so each
ceiling is the count measured when it was set, the same under the venv's
tpm2-pytss 3.0 and Debian's 1.2; there are no timing assertions here. More
commands fail the test (per-secret TPM work, an extra round trip); fewer pass,
and then the ceiling should come down to the new count.
"""

from __future__ import annotations

import collections
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.node import destroy_many_on_node
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import (
    PolicyKeyStore,
    sign_grant,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine, transfer
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir
from rig.manifest import Ledger
from rig.policy import approve

pytestmark = pytest.mark.swtpm

# Measured on a fresh swtpm 0.7.1, libtss2 3.2.1, tpm2-pytss 3.0.0 and 1.2.0 (equal).
CEILINGS = {
    # ReadPublic + NV_ReadPublic ×4 (lookups), CreatePrimary, EvictControl, FlushContext, NV_DefineSpace, NV_Increment
    "provision": 10,
    # enroll re-run: lookups only (ReadPublic ×2, NV_ReadPublic ×4)
    "provision_again": 6,
    # SRK and epoch counter lookups (ReadPublic ×2, NV_ReadPublic ×2), NV_Read of the epoch
    "facts": 5,
    # lookups (4), then one salted session, one Create, its flush: whatever the number of secrets
    "seal_new_vm": 7,
    # lookups (4), approval signature check (LoadExternal, VerifySignature, flush), Load, policy session
    # (StartAuthSession, PolicyCommandCode, PolicySecret, PolicyNV, PolicyAuthorize), one Unseal, 2 flushes
    "unseal": 16,
    # NV_ReadPublic ×2 (lookup), NV_Increment, NV_Read
    "bump_epoch": 4,
    # revoking VMs that left the node: the epoch read (lookups 2, NV_Read), one bump (4), whatever the number of VMs
    "revoke": 7,
    # node identity lookups only (ReadPublic ×2, NV_ReadPublic ×2); the approval is checked in software
    "install_approval": 4,
    # lookups (4; the target's name is computed in software), grant signature check (LoadExternal,
    # VerifySignature, flush), Load, LoadExternal(target SRK), policy session (StartAuthSession,
    # PolicyDuplicationSelect, PolicySecret, PolicyNV, PolicyAuthorize), one Duplicate (it ends the
    # session), 2 flushes
    "export": 17,
    # lookups (4), one Import, then the unseal step's test-unseal without its lookups (12)
    "import": 17,
}
# What installing an approval may ask the TPM: the node's names, nothing that uses a key.
IDENTITY_LOOKUPS = {"ReadPublic", "NV_ReadPublic"}

VMID = 100
UUID = "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"
OTHER_VMID = 101
OTHER_UUID = "0f0e0d0c-0b0a-4909-8807-0605040302ab"


def secrets(count: int) -> list[engine.Secret]:
    return [engine.Secret(f"secret-{i:02d}", f"value {i}".encode()) for i in range(count)]


class Node:
    """A node with a counted TPM, and the controller's policy keys for its VMs."""

    def __init__(self, counted_swtpm, root: Path, provision: bool = True):
        self.counter = counted_swtpm.counter
        self.tcti = counted_swtpm.tcti
        self.state_dir = str(root / "state")
        self.keys = PolicyKeyStore(str(root / "controller"))
        if provision:
            with self.backend() as backend:
                backend.provision()

    def backend(self):
        return open_backend("tpm2", tcti=self.tcti, state_dir=self.state_dir)

    def count(self, step) -> tuple[object, collections.Counter]:
        """Run step(backend) in a TPM context of its own, as one module run; its result and its TPM commands."""
        self.counter.reset()
        with self.backend() as backend:
            result = step(backend)
        return result, self.counter.snapshot()

    def vm(self, vmid: int = VMID, uuid: str = UUID) -> VmDir:
        return VmDir(self.state_dir, vmid, uuid)

    def approval(self, vmid: int = VMID, uuid: str = UUID):
        """Signed on the controller from the node's facts (not counted: it is the facts step)."""
        self.keys.create(vmid, uuid)
        with self.backend() as backend:
            facts = backend.facts()
        return approve(self.keys, vmid, uuid, facts)

    def seal(self, values: list[engine.Secret], vmid: int = VMID, uuid: str = UUID, approval=None):
        approval = approval or self.approval(vmid, uuid)
        key_public, _name = self.keys.public(vmid, uuid)
        return self.count(
            lambda backend: engine.seal(
                backend,
                self.vm(vmid, uuid),
                values,
                migratable=True,
                pcrs=None,
                policy_key_public=key_public,
                approval=approval,
                check_mode=False,
            )
        )


def assert_under(step: str, counted: collections.Counter) -> None:
    total, ceiling = sum(counted.values()), CEILINGS[step]
    assert total <= ceiling, (
        f"{step}: {total} TPM commands, ceiling {ceiling}: {dict(counted)}. More means per-secret TPM work "
        "or an extra round trip crept in (DESIGN.md §6)"
    )


@pytest.fixture
def node(counted_swtpm, tmp_path):
    return Node(counted_swtpm, tmp_path)


def test_node_provisioning_on_a_fresh_tpm(counted_swtpm, tmp_path):
    fresh = Node(counted_swtpm, tmp_path, provision=False)
    done, counted = fresh.count(lambda backend: backend.provision())
    assert len(done) == 3, done  # SRK, epoch counter defined and initialised
    assert counted["CreatePrimary"] == 1 and counted["NV_DefineSpace"] == 1
    assert_under("provision", counted)


def test_node_provisioning_again_changes_nothing_in_the_tpm(node):
    done, counted = node.count(lambda backend: backend.provision())
    assert done == []
    assert not {"CreatePrimary", "EvictControl", "NV_DefineSpace", "NV_Increment"} & set(counted), counted
    assert_under("provision_again", counted)


def test_reading_node_facts(node):
    facts, counted = node.count(lambda backend: backend.facts())
    assert facts.provisioned
    assert_under("facts", counted)


def test_sealing_a_new_vm_costs_the_same_for_3_and_60_secrets(node):
    few, few_counted = node.seal(secrets(3))
    many, many_counted = node.seal(secrets(60), OTHER_VMID, OTHER_UUID)
    assert [b["action"] for b in few["blobs"]] == ["created"] * 3
    assert [b["action"] for b in many["blobs"]] == ["created"] * 60
    assert few_counted == many_counted, (few_counted, many_counted)
    assert many_counted["Create"] == 1
    assert_under("seal_new_vm", many_counted)


def test_resealing_an_unchanged_vm_unseals_once_and_creates_nothing(node):
    approval = node.approval()
    node.seal(secrets(60), approval=approval)
    result, counted = node.seal(secrets(60), approval=approval)
    assert not result["changed"]
    assert counted["Unseal"] == 1 and counted["Create"] == 0, counted
    assert_under("unseal", counted)


@pytest.mark.parametrize("how", ["verify", "unseal_to"])
def test_unsealing_a_vm_costs_the_same_for_3_and_60_secrets(node, tmp_path, how):
    ledger = Ledger()
    node.seal(secrets(3))
    node.seal(secrets(60), OTHER_VMID, OTHER_UUID)

    def unseal(vmid, uuid):
        vm = node.vm(vmid, uuid)
        if how == "verify":
            return lambda backend: engine.verify(backend, vm)["verified"]
        dest = str(tmp_path / f"out-{vmid}")
        # The manifest the node checks first (rules 1-5) is signed and cached beforehand; the check is software.
        ledger.publish(node.state_dir, vmid, uuid, "pve1", vm.keyslot().node_name)
        return lambda backend: engine.unseal_to(
            backend, vm, dest, check_mode=False, cluster=ledger.cluster, vm_ctime=None, now=ledger.now
        )["changed"]

    few_ok, few_counted = node.count(unseal(VMID, UUID))
    many_ok, many_counted = node.count(unseal(OTHER_VMID, OTHER_UUID))
    assert few_ok and many_ok
    assert few_counted == many_counted, (few_counted, many_counted)
    assert many_counted["Unseal"] == 1
    assert_under("unseal", many_counted)


def test_epoch_bump(node):
    epoch, counted = node.count(lambda backend: backend.bump_epoch())
    assert epoch == 2
    assert counted["NV_Increment"] == 1
    assert_under("bump_epoch", counted)


def test_revoking_a_fleet_bumps_the_epoch_once_for_1_and_for_5_vms(node):
    fleet = [(300 + i, f"6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a{i:02x}") for i in range(6)]
    for vmid, uuid in fleet:
        node.seal(secrets(2), vmid, uuid)
    now = "2030-01-01T00:00:00Z"
    one, one_counted = node.count(
        lambda b: destroy_many_on_node(b, node.state_dir, fleet[:1], now=now, check_mode=False)
    )
    five, five_counted = node.count(
        lambda b: destroy_many_on_node(b, node.state_dir, fleet[1:], now=now, check_mode=False)
    )
    assert one_counted == five_counted, (one_counted, five_counted)
    assert five_counted["NV_Increment"] == 1
    assert {r["evidence"]["epoch_after"] for r in five["results"]} == {one["results"][0]["evidence"]["epoch_after"] + 1}
    assert_under("revoke", five_counted)


def test_installing_an_approval_is_a_software_check(node):
    node.seal(secrets(3))
    with node.backend() as backend:
        backend.bump_epoch()
    approval = node.approval()
    result, counted = node.count(
        lambda backend: engine.install_approval(backend, node.vm(), approval, check_mode=False)
    )
    assert result == {"changed": True, "epoch": 2}
    assert set(counted) <= IDENTITY_LOOKUPS, counted
    assert_under("install_approval", counted)


def migration_counts(pair, tmp_path, count: int):
    """(export, import) TPM commands for moving one VM with `count` secrets between two counted TPMs."""
    source, target = Node(pair[0], tmp_path / "a"), Node(pair[1], tmp_path / "b")
    target.keys = source.keys  # one controller
    source.seal(secrets(count))
    with source.backend() as backend:
        facts = backend.facts()
    with target.backend() as backend:
        target_facts = backend.facts()
    grant = sign_grant(
        source.keys.load(VMID, UUID),
        vmid=VMID,
        vm_uuid=UUID,
        source_name=facts.node_name,
        source_epoch_nv_name=facts.epoch_nv_name,
        epoch=facts.epoch,
        target_name=target_facts.node_name,
        target_public=target_facts.node_public,
    )
    migration = {"source": "pve1", "target": "pve2", "not_after": "2999-01-01T00:00:00Z"}
    path = transfer.bundle_path(source.state_dir, VMID, UUID)
    exported, export_counted = source.count(
        lambda backend: transfer.export_vm(
            backend,
            source.vm(),
            grant,
            migration=migration,
            manifest={"version": 1, "digest": "ab" * 32},
            path=path,
            now=datetime.now(UTC),
            check_mode=False,
        )
    )
    assert exported["status"] == "exported"
    incoming = transfer.bundle_path(target.state_dir, VMID, UUID)
    Path(incoming).parent.mkdir(parents=True)
    shutil.copyfile(path, incoming)
    approval = target.approval()
    imported, import_counted = target.count(
        lambda backend: transfer.import_vm(
            backend, target.vm(), approval, path=incoming, now=datetime.now(UTC), check_mode=False
        )
    )
    assert imported["status"] == "imported" and len(imported["blobs"]) == count
    return export_counted, import_counted


def test_migrating_a_vm_costs_the_same_for_3_and_60_secrets(counted_swtpm_pair, tmp_path):
    few = migration_counts(counted_swtpm_pair, tmp_path / "few", 3)
    many = migration_counts(counted_swtpm_pair, tmp_path / "many", 60)
    assert few == many, (few, many)
    export_counted, import_counted = many
    assert export_counted["Duplicate"] == 1 and import_counted["Import"] == 1
    assert import_counted["Unseal"] == 1, import_counted
    assert_under("export", export_counted)
    assert_under("import", import_counted)
