"""The migrate playbook between two plain Linux "nodes" (ironclaw_pve false), each with its own swtpm:
the target unseals the same bytes, the source copy dies, the neighbours keep working, the store records
the move, an interrupted run converges, and bad input changes nothing."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import sys

import pytest
from playbook_rig import (
    DEBIAN_PYTHON,
    PLAYBOOKS,
    Lab,
    enrolled_lab,
    leak_markers,
    task_count,
    task_result,
    vm_uuid_of,
)

pytestmark = pytest.mark.swtpm

VMID, NEIGHBOUR = 300, 301
UUID = vm_uuid_of("nodeA", VMID)


def two_nodes(root):
    """nodeA (Debian's python) and nodeB (the venv's), each on its own swtpm, enrolled; VM 300 provisioned on nodeA."""
    return enrolled_lab(
        root, [("nodeA", "tpm2", DEBIAN_PYTHON), ("nodeB", "tpm2", sys.executable)], provision=(("nodeA", VMID),)
    )


@pytest.fixture
def lab(tmp_path, playbook_tools):
    # pytest closes the fixture's generator, which exits the context
    # pylint: disable-next=contextmanager-generator-missing-cleanup
    with two_nodes(tmp_path) as made:
        yield made


@pytest.fixture(scope="module")
def untouched_lab(tmp_path_factory, playbook_tools):
    """One lab for the refusals: each must leave it exactly as it was."""
    # pytest closes the fixture's generator, which exits the context
    # pylint: disable-next=contextmanager-generator-missing-cleanup
    with two_nodes(tmp_path_factory.mktemp("untouched")) as made:
        yield made


# The migrate playbook's ceiling: one task per step, for one VM as for a fleet.
MIGRATE_TASKS = 15
IMPORT_STEP = "On the target, import the bundles under approvals signed for it and test-unseal them"


def migrate(lab: Lab, *extra: str, source="nodeA", target="nodeB", **options):
    args = ["-e", f"ironclaw_vmid={VMID}", "-e", f"ironclaw_vm_uuid={UUID}"]
    args += ["-e", f"ironclaw_source={source}", "-e", f"ironclaw_target={target}"]
    return lab.run("migrate", *args, *extra, **options)


def unsealed(lab: Lab, node: str, tmp_path, vmid=VMID, uuid=UUID, expect_fail=False) -> dict[str, bytes]:
    dest = tmp_path / f"out-{node}-{vmid}"
    shutil.rmtree(dest, ignore_errors=True)
    args = ["-e", f"ironclaw_node={node}", "-e", f"ironclaw_vmid={vmid}", "-e", f"ironclaw_vm_uuid={uuid}"]
    lab.run(str(PLAYBOOKS / "unseal.yml"), *args, "-e", f"unseal_dest={dest}", expect_fail=expect_fail)
    return {} if expect_fail else {p.name: p.read_bytes() for p in dest.iterdir()}


def history(lab: Lab) -> list[dict]:
    """The VM's manifests in the store, oldest first (payloads of the DSSE envelopes)."""
    return [json.loads(base64.b64decode(json.loads(p.read_text())["payload"])) for p in lab.store_chain("nodeA", VMID)]


def test_migration_moves_the_state_and_revokes_the_source(lab, tmp_path):
    lab.provision("nodeA", NEIGHBOUR)
    saved = tmp_path / "saved-source-copy"
    shutil.copytree(lab.vm_dir("nodeA", VMID), saved)
    done = migrate(lab, verbosity=4)
    assert "migrated" in done.stdout and "was revoked" in done.stdout
    assert task_count(done.stdout) <= MIGRATE_TASKS, task_count(done.stdout)
    # At -vvvv neither output holds any secret, in the clear, base64 or hex.
    output = (done.stdout + done.stderr).encode()
    for plaintext in lab.plaintexts.values():
        for marker in leak_markers(plaintext):
            assert marker not in output
    # The target unseals exactly the same bytes.
    assert unsealed(lab, "nodeB", tmp_path) == lab.plaintexts
    # The store records the move as the next version.
    chain = history(lab)
    assert chain[-1]["node"]["name"] == "nodeB" and chain[-1]["version"] == len(chain) == 2
    assert chain[-1]["migration"]["source"] == "nodeA" and chain[-1]["migration"]["target"] == "nodeB"
    assert chain[-1]["blobs"] == chain[-2]["blobs"], "blobs travel unchanged"
    assert not lab.vm_dir("nodeA", VMID).exists(), "the source's files are removed"
    # The neighbour on the source was re-approved and still verifies.
    lab.verify("nodeA", NEIGHBOUR)
    # No bundle is left anywhere.
    assert not list(lab.root.rglob("*.bundle.json"))

    # A finished migration re-run changes nothing and says so.
    before = lab.snapshot()
    again = migrate(lab)
    assert "already migrated" in again.stdout and "nothing to do" in again.stdout
    assert all(counts["changed"] == 0 for counts in again.recap.values()), again.recap
    assert lab.snapshot() == before
    assert unsealed(lab, "nodeB", tmp_path) == lab.plaintexts

    # A saved copy of the source's files put back does not unseal there (its epoch was bumped).
    shutil.copytree(saved, lab.vm_dir("nodeA", VMID))
    unsealed(lab, "nodeA", tmp_path, expect_fail=True)


# The steps' Python boundaries (plugins/plugin_utils/faults.py): the run dies right after each of them.
KILL_POINTS = ["migration.exported", "migration.fetched", "migration.imported", "migration.recorded"]


@pytest.mark.parametrize("kill_at", KILL_POINTS, ids=["export", "transfer", "import", "before-revocation"])
def test_killed_migration_converges_when_re_run(lab, tmp_path, kill_at):
    killed = lab.start(
        "migrate",
        *["-e", f"ironclaw_vmid={VMID}", "-e", f"ironclaw_vm_uuid={UUID}"],
        *["-e", "ironclaw_source=nodeA", "-e", "ironclaw_target=nodeB"],
        env_extra={"IRONCLAW_FAULT_AT": kill_at},
    )
    killed.communicate(timeout=180)
    assert killed.returncode == -signal.SIGKILL, "the run must have been killed at the chosen step"
    # No step leaves zero working copies: the source still unseals (it is revoked only after the target verified).
    assert unsealed(lab, "nodeA", tmp_path) == lab.plaintexts
    migrate(lab)
    assert unsealed(lab, "nodeB", tmp_path) == lab.plaintexts
    assert not lab.vm_dir("nodeA", VMID).exists()
    assert history(lab)[-1]["node"]["name"] == "nodeB"


def test_killed_after_the_epoch_bump_re_run_re_approves_the_neighbour(lab, tmp_path):
    """Killed between the source's epoch bump and the neighbours' new approvals: the re-run finds the VM already
    revoked and still re-approves the VM that stays (its old approval names the old epoch)."""
    lab.provision("nodeA", NEIGHBOUR)
    killed = lab.start(
        "migrate",
        *["-e", f"ironclaw_vmid={VMID}", "-e", f"ironclaw_vm_uuid={UUID}"],
        *["-e", "ironclaw_source=nodeA", "-e", "ironclaw_target=nodeB"],
        env_extra={"IRONCLAW_FAULT_AT": "migration.revoked"},
    )
    killed.communicate(timeout=180)
    assert killed.returncode == -signal.SIGKILL
    assert not lab.vm_dir("nodeA", VMID).exists(), "killed after the revocation"
    migrate(lab)
    lab.verify("nodeA", NEIGHBOUR)
    assert unsealed(lab, "nodeB", tmp_path) == lab.plaintexts


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("-e", "ironclaw_target=nodeC"), "not in the inventory"),
        (("-e", "ironclaw_target=nodeA"), "cannot migrate to the node it is on"),
        (("-e", "ironclaw_source=nodeB", "-e", "ironclaw_target=nodeA"), "not on the source nodeB"),
        (("-e", "ironclaw_migration_window_minutes=200000"), "before the migration's not_after"),
        (("-e", "ironclaw_store_dir=/nonexistent/store"), "store"),
    ],
    ids=["unknown-target", "target-is-source", "vm-not-on-source", "manifest-expires-first", "store-unreachable"],
)
def test_bad_input_changes_nothing_on_either_node(untouched_lab, extra, message):
    before = untouched_lab.snapshot()
    done = migrate(untouched_lab, *extra, expect_fail=True)
    assert message in done.stdout + done.stderr, done.stdout[-3000:]
    assert untouched_lab.snapshot() == before


def test_check_mode_plans_and_changes_nothing(untouched_lab):
    """--check runs every decision (request, identity, placement, target, window, grant rules) and the source's
    manifest checks, reports what it would do, and writes nothing anywhere (no bundle, no grant recorded)."""
    before = untouched_lab.snapshot()
    done = migrate(untouched_lab, check=True)
    assert f"VM {VMID}: pending; would migrate it from nodeA to nodeB" in done.stdout, done.stdout[-3000:]
    assert untouched_lab.snapshot() == before


def test_target_record_deleted_from_the_store_changes_nothing(untouched_lab, tmp_path):
    """The store's head lists every node record: one deleted is a truncated store, named, not an unenrolled node."""
    record = untouched_lab.controller_dir / "store" / "nodes" / "nodeB.json"
    record.rename(tmp_path / "nodeB.json")
    try:
        before = untouched_lab.snapshot()
        done = migrate(untouched_lab, expect_fail=True)
        assert "file nodes/nodeB.json: listed in the head, missing from the store" in done.stdout
        assert untouched_lab.snapshot() == before
    finally:
        (tmp_path / "nodeB.json").rename(record)


def test_re_approval_on_the_source_does_not_pull_back_a_vm_moving_away(lab, tmp_path):
    """VM 301's move is recorded on nodeB but its source copy not yet revoked when VM 300's revocation re-approves
    the source's other VMs: that must not record 301 on nodeA again (it would then be placed where its state is not
    once its own revocation runs)."""
    lab.provision("nodeA", NEIGHBOUR)
    neighbour_uuid = vm_uuid_of("nodeA", NEIGHBOUR)
    killed = lab.start(
        "migrate",
        *["-e", f"ironclaw_vmid={NEIGHBOUR}", "-e", f"ironclaw_vm_uuid={neighbour_uuid}"],
        *["-e", "ironclaw_source=nodeA", "-e", "ironclaw_target=nodeB"],
        env_extra={"IRONCLAW_FAULT_AT": "migration.recorded"},
    )
    killed.communicate(timeout=180)
    assert killed.returncode == -signal.SIGKILL
    migrate(lab)  # VM 300: its revocation re-approves VM 301, still on nodeA's disk
    chain = [
        json.loads(base64.b64decode(json.loads(p.read_text())["payload"])) for p in lab.store_chain("nodeA", NEIGHBOUR)
    ]
    assert [m["node"]["name"] for m in chain] == ["nodeA", "nodeB"], "nothing new recorded for the VM moving away"
    lab.run(
        "migrate",
        *["-e", f"ironclaw_vmid={NEIGHBOUR}", "-e", f"ironclaw_vm_uuid={neighbour_uuid}"],
        *["-e", "ironclaw_source=nodeA", "-e", "ironclaw_target=nodeB"],
    )
    assert unsealed(lab, "nodeB", tmp_path, NEIGHBOUR, neighbour_uuid) == lab.plaintexts
    assert unsealed(lab, "nodeB", tmp_path) == lab.plaintexts


def fleet_args(vms, source="nodeA", target="nodeB") -> list[str]:
    return ["-e", json.dumps({"ironclaw_vms": vms, "ironclaw_source": source, "ironclaw_target": target})]


def test_fleet_moves_in_one_run_under_one_epoch_bump(lab, tmp_path):
    """Three VMs move in one run: each opens on the target with its own bytes, the source's epoch moves once (one
    revocation for the fleet, not one per VM), the VM that stays is re-approved once and still works, a re-run
    changes nothing, and a saved copy of any of them is dead on the source."""
    fleet = [VMID, 302, 303]
    lab.provision_fleet("nodeA", fleet[1:] + [NEIGHBOUR])
    saved = {vmid: tmp_path / f"saved-{vmid}" for vmid in fleet}
    for vmid, where in saved.items():
        shutil.copytree(lab.vm_dir("nodeA", vmid), where)
    vms = [{"vmid": vmid, "vm_uuid": vm_uuid_of("nodeA", vmid)} for vmid in fleet]
    done = lab.run("migrate", *fleet_args(vms))
    for vmid in fleet:
        assert f"VM {vmid} migrated: its sealed state is on nodeB" in done.stdout
        assert unsealed(lab, "nodeB", tmp_path, vmid, vm_uuid_of("nodeA", vmid)) == lab.plaintexts
        assert not lab.vm_dir("nodeA", vmid).exists()
    records = [json.loads((lab.root / "nodeA" / "destroyed" / f"{vm['vm_uuid']}.json").read_text()) for vm in vms]
    assert {(r["epoch_before"], r["epoch_after"]) for r in records} == {(1, 2)}, "one epoch bump for the fleet"
    assert done.stdout.count("and 1 other VM(s) here were re-approved") == len(fleet), "the neighbour re-approved once"
    assert task_count(done.stdout) <= MIGRATE_TASKS, "one task per step, whatever the number of VMs"
    lab.verify("nodeA", NEIGHBOUR)
    assert not list(lab.root.rglob("*.bundle.json"))

    before = lab.snapshot()
    again = lab.run("migrate", *fleet_args(vms))
    assert again.stdout.count("was already migrated from nodeA to nodeB") == len(fleet)
    assert all(counts["changed"] == 0 for counts in again.recap.values()), again.recap
    assert lab.snapshot() == before

    for vmid, where in saved.items():
        shutil.copytree(where, lab.vm_dir("nodeA", vmid))
        unsealed(lab, "nodeA", tmp_path, vmid, vm_uuid_of("nodeA", vmid), expect_fail=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (fleet_args([VMID, VMID]), "listed twice"),
        (fleet_args([VMID, "30x"]), "Not a VMID (100 to 999999999): 30x"),
        (fleet_args([]), "ironclaw_vms is empty"),
        (fleet_args([VMID]) + ["-e", f"ironclaw_vmid={VMID}"], "not both"),
        (fleet_args([VMID]) + ["-e", f"ironclaw_vm_uuid={UUID}"], "give each VM's uuid in its entry"),
        # One VM of the fleet is not on the source: the run stops before anything changed.
        (fleet_args([{"vmid": VMID, "vm_uuid": UUID}, {"vmid": 399, "vm_uuid": vm_uuid_of("nodeA", 399)}]), "399"),
    ],
    ids=["duplicate", "not-a-vmid", "empty", "vmid-and-vms", "vm-uuid-and-vms", "unknown-vm"],
)
def test_bad_fleet_changes_nothing(untouched_lab, args, message):
    before = untouched_lab.snapshot()
    done = untouched_lab.run("migrate", *args, expect_fail=True)
    assert message in done.stdout + done.stderr, done.stdout[-3000:]
    assert untouched_lab.snapshot() == before


def test_migrating_back_onto_a_stale_copy(lab, tmp_path):
    """nodeA's copy is saved, the VM moves to nodeB and a secret is rotated there, the saved copy (older keyslot,
    blobs and cached manifest) is put back on nodeA, then the VM moves back: the verified bundle replaces the stale
    files, never keeps or approves them, and nodeA opens the newest secrets."""
    saved = tmp_path / "saved-source-copy"
    shutil.copytree(lab.vm_dir("nodeA", VMID), saved)
    migrate(lab)
    rotated = lab.write_secrets(
        "rotated.json",
        [
            {"name": "master-key", "src": str(lab.big_path)},
            {"name": "db-pass", "src": str(lab.text_path)},
            {"name": "api-token", "content": "rotated-on-nodeB"},
        ],
    )
    lab.run("provision", *lab.vm_args("nodeB", VMID, UUID, secrets_file=rotated))
    newest = {**lab.plaintexts, "api-token": b"rotated-on-nodeB"}
    on_b = {p.name: p.read_bytes() for p in lab.vm_dir("nodeB", VMID).glob("*.sealed")}
    shutil.copytree(saved, lab.vm_dir("nodeA", VMID))
    stale = {p.name: p.read_bytes() for p in lab.vm_dir("nodeA", VMID).glob("*.sealed")}
    assert stale["api-token.sealed"] != on_b["api-token.sealed"], "the copy put back is older"

    done = migrate(lab, source="nodeB", target="nodeA", verbosity=1)
    imported = task_result(done.stdout, IMPORT_STEP, "localhost")["run"]["vms"][str(VMID)]["imported"]
    assert imported["status"] == "imported" and "api-token.sealed" in imported["replaced"], imported
    # nodeA's blobs are the bundle's (nodeB's), byte for byte: the stale generation is gone.
    assert {p.name: p.read_bytes() for p in lab.vm_dir("nodeA", VMID).glob("*.sealed")} == on_b
    assert history(lab)[-1]["node"]["name"] == "nodeA"
    assert not lab.vm_dir("nodeB", VMID).exists()
    assert unsealed(lab, "nodeA", tmp_path) == newest


# A fleet's cost per extra VM on both TPMs together (the ceiling: 25; 65 when each VM was its own tasks).
TPM_COMMANDS_PER_EXTRA_VM = 25


def test_fleet_costs_few_tpm_commands_and_tasks_per_extra_vm(tmp_path, playbook_tools):
    """Ten VMs in one run, then one, counted on both swtpms: the same tasks for both (one per step), and an extra VM
    costs only its own TPM work (on the source the grant's check, the duplication policy and TPM2_Duplicate; on
    the target TPM2_Import and the test-unseal): each node's facts are read once per run and every VM is handled
    under one backend context. Both runs leave a neighbour to re-approve, so they differ only in the VMs moved."""
    fleet = list(range(302, 312))
    with enrolled_lab(
        tmp_path,
        [("nodeA", "tpm2", DEBIAN_PYTHON), ("nodeB", "tpm2", sys.executable)],
        provision=tuple(("nodeA", vmid) for vmid in [VMID, *fleet, NEIGHBOUR]),
        counted=True,
    ) as lab:

        def counted_run(vms):
            before = {name: c.snapshot() for name, c in lab.counters.items()}
            done = lab.run("migrate", *fleet_args([{"vmid": v, "vm_uuid": vm_uuid_of("nodeA", v)} for v in vms]))
            spent = {name: c.snapshot() - before[name] for name, c in lab.counters.items()}
            print(f"TPM commands for {len(vms)} VM(s): {spent}")
            return sum(sum(counts.values()) for counts in spent.values()), done

        ten, many = counted_run(fleet)
        one, single = counted_run([VMID])
        per_extra = (ten - one) / (len(fleet) - 1)
        print(f"TPM commands: 1 VM {one}, {len(fleet)} VMs {ten}, per extra VM {per_extra}")
        assert per_extra <= TPM_COMMANDS_PER_EXTRA_VM, (one, ten)
        assert task_count(single.stdout) == task_count(many.stdout) <= MIGRATE_TASKS
        for vmid in fleet:
            assert f"VM {vmid} migrated: its sealed state is on nodeB" in many.stdout
        lab.verify("nodeA", NEIGHBOUR)


def test_the_public_roles_migrate_a_fleet_as_the_playbook_does(lab, tmp_path):
    """premigration_teardown (main, then revoke) on the source and restore_verify on the target, in a user's own
    playbook: the same steps as the migrate playbook, the same result."""
    lab.provision("nodeA", NEIGHBOUR)
    vms = [{"vmid": VMID, "vm_uuid": UUID}]
    done = lab.run(str(PLAYBOOKS / "migrate_roles.yml"), *fleet_args(vms))
    assert f"VM {VMID} migrated: its sealed state is on nodeB" in done.stdout
    assert unsealed(lab, "nodeB", tmp_path) == lab.plaintexts
    assert not lab.vm_dir("nodeA", VMID).exists()
    assert history(lab)[-1]["node"]["name"] == "nodeB"
    lab.verify("nodeA", NEIGHBOUR)
    assert not list(lab.root.rglob("*.bundle.json"))


# -- the target must be attested (DESIGN §8) ---------------------------------------------------------------------
def test_tofu_target_is_refused_with_nothing_changed_then_allowed_explicitly(lab, tmp_path):
    """nodeB re-enrolled with ironclaw_ek_trust=tofu: nothing proves its SRK is a TPM's, so it receives no VM root
    key unless the run allows tofu targets by name."""
    lab.run("enroll", "-l", "nodeB", "-e", "ironclaw_ek_trust=tofu")
    before = lab.snapshot()
    done = migrate(lab, expect_fail=True)
    assert "The target nodeB was enrolled with ironclaw_ek_trust=tofu" in done.stdout, done.stdout[-3000:]
    assert "ironclaw_allow_tofu_targets: true" in done.stdout and "Nothing was changed." in done.stdout
    assert lab.snapshot() == before
    migrate(lab, "-e", "ironclaw_allow_tofu_targets=true")
    assert unsealed(lab, "nodeB", tmp_path) == lab.plaintexts


def test_tofu_target_is_allowed_by_its_own_inventory_variable_not_by_the_sources(lab, tmp_path):
    """ironclaw_allow_tofu_targets as a node's inventory variable: set on the source it allows nothing (nothing
    changed); set on the tofu target itself, that target receives the VM."""
    lab.run("enroll", "-l", "nodeB", "-e", "ironclaw_ek_trust=tofu")
    inventory = json.loads(lab.inventory.read_text())
    hosts = inventory["all"]["children"]["ironclaw_nodes"]["hosts"]
    hosts["nodeA"]["ironclaw_allow_tofu_targets"] = True
    lab.inventory.write_text(json.dumps(inventory))
    before = lab.snapshot()
    done = migrate(lab, expect_fail=True)
    assert "The target nodeB was enrolled with ironclaw_ek_trust=tofu" in done.stdout, done.stdout[-3000:]
    assert lab.snapshot() == before
    hosts["nodeB"]["ironclaw_allow_tofu_targets"] = True
    lab.inventory.write_text(json.dumps(inventory))
    migrate(lab)
    assert unsealed(lab, "nodeB", tmp_path) == lab.plaintexts


def test_tampered_target_record_stops_the_migration_with_nothing_changed(untouched_lab):
    """The target's signed record altered in the store (its SRK swapped for an attacker's key): refused, named."""
    record = untouched_lab.controller_dir / "store" / "nodes" / "nodeB.json"
    original = record.read_bytes()
    envelope = json.loads(original)
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["srk_name"] = payload["attestation"]["srk_name"] = "000b" + "ab" * 32
    envelope["payload"] = base64.b64encode(json.dumps(payload, sort_keys=True).encode()).decode()
    record.write_text(json.dumps(envelope))
    try:
        before = untouched_lab.snapshot()
        done = migrate(untouched_lab, expect_fail=True)
        assert "nodes/nodeB.json" in done.stdout, done.stdout[-3000:]
        assert "Nothing was changed." in done.stdout
        assert untouched_lab.snapshot() == before
    finally:
        record.write_bytes(original)
