"""Signed manifests through the playbooks: versions, rollback, offline signing, rotation, expiry, bad input.

Each scenario gets its own small lab (a software-backend node, its own
controller and store), so trust roots and floors of one cannot leak into another;
where a scenario does not test init or enroll, its lab is a copy of one enrolled
once (enrolled_lab).
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import pytest
from playbook_rig import Lab, Node, changed_tasks, enrolled_lab, leak_markers, task_result, vm_uuid_of

pytestmark = pytest.mark.swtpm  # needs the playbook tools that come with the swtpm rig

NODE = "nodeB"
VMID = 100
PUBLISH_STORE = "Sign and store the next manifest version when the sealed state changed"
VERIFY_TASK = "Verify the sealed state against the signed manifest, then test-unseal"


@pytest.fixture
def small_lab(tmp_path, playbook_tools) -> Lab:
    lab = Lab(tmp_path, [Node(NODE, "software", tmp_path / NODE, sys.executable)])
    return lab


@pytest.fixture
def enrolled_small_lab(tmp_path, playbook_tools):
    """A small lab after init and enroll (a copy of a template: the runs are paid once per process)."""
    # pytest closes the fixture's generator, which exits the context
    # pylint: disable-next=contextmanager-generator-missing-cleanup
    with enrolled_lab(tmp_path, [(NODE, "software", sys.executable)]) as lab:
        yield lab


def init_and_enroll(lab: Lab, *extra: str) -> None:
    lab.run("init", "-e", f"ironclaw_controller_dir={lab.controller_dir}", *extra)
    lab.run("enroll", *extra)


def chain(lab: Lab, controller: Path | None = None) -> list[str]:
    store = (controller or lab.controller_dir) / "store" / "vms" / vm_uuid_of(NODE, VMID)
    return sorted(p.name for p in store.glob("manifest-*.json"))


def manifest_payload(path: Path) -> dict:
    envelope = json.loads(path.read_text())
    return json.loads(base64.b64decode(envelope["payload"]))


def secrets_with(lab: Lab, name: str, token: str) -> Path:
    return lab.write_secrets(
        name,
        [
            {"name": "master-key", "src": str(lab.big_path)},
            {"name": "api-token", "content": token},
        ],
    )


def test_versions_follow_the_sealed_state_and_old_files_are_refused(enrolled_small_lab: Lab):
    lab = enrolled_small_lab
    first = secrets_with(lab, "v1.json", "token-one")
    lab.provision(NODE, VMID, first)
    assert chain(lab) == ["manifest-00000001.json"]

    again = lab.provision(NODE, VMID, first)
    assert changed_tasks(again.stdout) == [], "an unchanged re-run must make no new version"
    assert chain(lab) == ["manifest-00000001.json"]

    v1_copy = lab.root / "v1-copy"
    shutil.copytree(lab.vm_dir(NODE, VMID), v1_copy)
    lab.provision(NODE, VMID, secrets_with(lab, "v2.json", "token-two"))
    assert chain(lab) == ["manifest-00000001.json", "manifest-00000002.json"]
    v2 = manifest_payload(lab.controller_dir / "store" / "vms" / vm_uuid_of(NODE, VMID) / "manifest-00000002.json")
    v1_path = lab.controller_dir / "store" / "vms" / vm_uuid_of(NODE, VMID) / "manifest-00000001.json"
    assert v2["version"] == 2 and v2["prev"] is not None
    assert {b["name"]: b["generation"] for b in v2["blobs"]} == {"api-token": 2, "master-key": 1}
    assert v1_path.exists(), "old versions are kept"
    lab.verify(NODE, VMID)

    # Put the whole v1 directory back (keyslot, blobs, approval and the node's cached v1 manifest).
    shutil.rmtree(lab.vm_dir(NODE, VMID))
    shutil.copytree(v1_copy, lab.vm_dir(NODE, VMID))
    refused = lab.verify(NODE, VMID, expect_fail=True)
    msg = task_result(refused.stdout, VERIFY_TASK, NODE)["msg"]
    assert "does not match manifest version 2" in msg and "api-token" in msg


def test_offline_signing_round_trip(small_lab: Lab):
    lab = small_lab
    offline = lab.root / "offline-signer"
    sign_dir = lab.root / "exchange"
    # The offline machine makes the keys and the trust root; the controller gets the public root and the online
    # key that signs only the store head.
    lab.run("init", "-e", f"ironclaw_controller_dir={offline}")
    (lab.controller_dir / "trust").mkdir(parents=True)
    for root in (offline / "trust").glob("root-*.json"):
        shutil.copy(root, lab.controller_dir / "trust" / root.name)
    shutil.copytree(offline / "head-keys", lab.controller_dir / "head-keys")
    offline_vars = ("-e", "ironclaw_signing=offline", "-e", f"ironclaw_sign_dir={sign_dir}")
    lab.run("init", "-e", f"ironclaw_controller_dir={lab.controller_dir}", *offline_vars)
    assert not (lab.controller_dir / "trust-keys").exists(), "the controller holds no signing key"
    # The node record is signed by the trust root too: through the same exchange, confirmed like the rest.
    stopped = lab.run("enroll", *offline_vars, expect_fail=True)
    assert "signing request written to" in stopped.stdout and f"node record of {NODE}" in stopped.stdout
    (node_request,) = sign_dir.glob(f"node-{NODE}.request.json")
    node_digest = json.loads(node_request.read_text())["summary"]["digest"]
    confirm_node = json.dumps({"ironclaw_sign_confirm": [node_digest[:16]]})
    signer = ("-e", f"ironclaw_controller_dir={offline}", "-e", f"ironclaw_sign_dir={sign_dir}")
    lab.run("sign", *signer, "-e", confirm_node)
    lab.run("enroll", *offline_vars)

    stopped = lab.provision(NODE, VMID, expect_fail=True, extra=offline_vars)
    assert "signing request written to" in stopped.stdout and "ironclaw.sealed.sign" in stopped.stdout
    (request,) = sign_dir.glob(f"{vm_uuid_of(NODE, VMID)}-v*.request.json")
    text = request.read_bytes()
    for plaintext in lab.plaintexts.values():
        for marker in leak_markers(plaintext):
            assert marker not in text, "a signing request must hold no secret"
    summary = json.loads(text)["summary"]
    assert summary["subject"]["vmid"] == VMID and summary["version"] == 1
    assert sorted(b["name"] for b in summary["blobs"]) == ["api-token", "db-pass", "master-key"]

    confirm = json.dumps({"ironclaw_sign_confirm": [summary["digest"][:16]]})
    signing = lab.run(
        "sign", "-e", f"ironclaw_controller_dir={offline}", "-e", f"ironclaw_sign_dir={sign_dir}", "-e", confirm
    )
    assert "master-key" in signing.stdout, "the signer is shown what it signs"
    assert list(sign_dir.glob("*.signed.json"))

    lab.provision(NODE, VMID, extra=offline_vars)
    assert chain(lab) == ["manifest-00000001.json"]
    lab.verify(NODE, VMID, extra=offline_vars)


def test_trust_root_rotation_to_two_of_three(enrolled_small_lab: Lab):
    lab = enrolled_small_lab
    lab.provision(NODE, VMID, secrets_with(lab, "a.json", "token-a"))
    lab.run(
        "init",
        "-e",
        f"ironclaw_controller_dir={lab.controller_dir}",
        "-e",
        "ironclaw_trust_rotate=true",
        "-e",
        "ironclaw_trust_keys=3",
        "-e",
        "ironclaw_trust_threshold=2",
    )
    roots = sorted(p.name for p in (lab.controller_dir / "store" / "trust").glob("root-*.json"))
    assert roots == ["root-00000001.json", "root-00000002.json"]
    assert len(list((lab.controller_dir / "trust-keys").glob("*.pem"))) == 3
    assert len(list((lab.controller_dir / "trust-keys").glob("*.retired"))) == 1
    lab.provision(NODE, VMID, secrets_with(lab, "b.json", "token-b"))
    newest = manifest_payload(lab.controller_dir / "store" / "vms" / vm_uuid_of(NODE, VMID) / "manifest-00000002.json")
    assert newest["version"] == 2
    envelope = json.loads(
        (lab.controller_dir / "store" / "vms" / vm_uuid_of(NODE, VMID) / "manifest-00000002.json").read_text()
    )
    assert len(envelope["signatures"]) == 3
    lab.verify(NODE, VMID)
    # The node moved forward to root version 2 and keeps it.
    assert sorted(p.name for p in (lab.nodes[NODE].state_dir / "trust").glob("root-*.json")) == roots


def test_expiring_manifest_warns_and_is_reissued(enrolled_small_lab: Lab):
    lab = enrolled_small_lab
    short = ("-e", "ironclaw_manifest_expires_days=10", "-e", "ironclaw_manifest_resign_days=5")
    lab.provision(NODE, VMID, extra=short)
    warned = lab.verify(NODE, VMID)
    output = warned.stdout + warned.stderr  # warnings go to stderr
    assert "expires in 9 days" in output or "expires in 10 days" in output
    # Default lifetime, re-sign window 30 days: the 10-day manifest is re-issued unchanged as version 2.
    reissued = lab.provision(NODE, VMID)
    assert PUBLISH_STORE in changed_tasks(reissued.stdout)
    assert chain(lab) == ["manifest-00000001.json", "manifest-00000002.json"]


# -- bad input: clear error, nothing written --------------------------------------


def test_corrupt_store_file_is_named_and_nothing_is_written(enrolled_small_lab: Lab):
    lab = enrolled_small_lab
    lab.provision(NODE, VMID)
    stored = lab.controller_dir / "store" / "vms" / vm_uuid_of(NODE, VMID) / "manifest-00000001.json"
    stored.write_bytes(stored.read_bytes()[:-7])
    before = lab.snapshot()
    failed = lab.verify(NODE, VMID, expect_fail=True)
    assert "manifest-00000001.json" in failed.stdout
    assert lab.snapshot() == before


def test_missing_trust_root_is_refused(enrolled_small_lab: Lab):
    lab = enrolled_small_lab
    shutil.rmtree(lab.controller_dir / "trust")
    before = lab.snapshot()
    failed = lab.provision(NODE, VMID, expect_fail=True)
    assert "no trust root" in failed.stdout
    assert not chain(lab)
    assert lab.snapshot() == before


def test_signing_key_with_wrong_permissions_is_refused(enrolled_small_lab: Lab):
    lab = enrolled_small_lab
    (key,) = (lab.controller_dir / "trust-keys").glob("*.pem")
    key.chmod(0o644)
    before = lab.snapshot()
    failed = lab.provision(NODE, VMID, expect_fail=True)
    assert "mode 0600" in failed.stdout and key.name in failed.stdout
    assert lab.snapshot() == before


def test_manifest_for_another_cluster_is_refused(enrolled_small_lab: Lab):
    lab = enrolled_small_lab
    lab.provision(NODE, VMID, extra=("-e", "ironclaw_cluster=alpha"))
    before = lab.snapshot()
    failed = lab.verify(NODE, VMID, expect_fail=True, extra=("-e", "ironclaw_cluster=beta"))
    msg = task_result(failed.stdout, VERIFY_TASK, NODE)["msg"]
    assert "cluster" in msg and "alpha" in msg and "beta" in msg
    assert lab.snapshot() == before


def test_store_on_a_separate_host(tmp_path, playbook_tools):
    """ironclaw_store_host names another inventory host: node records and manifests go there, not to the controller."""
    lab = Lab(
        tmp_path,
        [
            Node(NODE, "software", tmp_path / NODE, sys.executable),
            Node("store1", "software", tmp_path / "store1-unused", sys.executable, enrolled_group=False),
        ],
    )
    store_dir = tmp_path / "store-host" / "ironclaw-store"
    on_store = ("-e", "ironclaw_store_host=store1", "-e", f"ironclaw_store_dir={store_dir}")
    init_and_enroll(lab, *on_store)
    lab.provision(NODE, VMID, extra=on_store)
    lab.verify(NODE, VMID, extra=on_store)
    assert (store_dir / "nodes" / f"{NODE}.json").is_file()
    stored = sorted(p.name for p in (store_dir / "vms" / vm_uuid_of(NODE, VMID)).glob("manifest-*.json"))
    assert stored == ["manifest-00000001.json"]
    assert not (lab.controller_dir / "store" / "vms").exists()


def test_a_restored_copy_verifies_where_the_store_places_it_and_is_refused_elsewhere(tmp_path, playbook_tools):
    """restore_verify after a restore from backup: the VM's chain is verified on the controller, and a copy put on a
    node its newest manifest does not place it on is refused by name, with nothing changed anywhere."""
    other = "nodeC"
    lab = Lab(
        tmp_path,
        [
            Node(NODE, "software", tmp_path / NODE, sys.executable),
            Node(other, "software", tmp_path / other, sys.executable),
        ],
    )
    init_and_enroll(lab)
    lab.provision(NODE, VMID)
    backup = tmp_path / "backup"
    shutil.copytree(lab.vm_dir(NODE, VMID), backup)
    shutil.rmtree(lab.vm_dir(NODE, VMID))
    shutil.copytree(backup, lab.vm_dir(NODE, VMID))
    restore = str(Path(__file__).parent / "playbooks" / "restore_verify.yml")
    vm = ("-e", f"ironclaw_vmid={VMID}", "-e", f"ironclaw_vm_uuid={vm_uuid_of(NODE, VMID)}")
    done = lab.run(restore, "-e", f"ironclaw_node={NODE}", *vm, verbosity=1)
    verified = task_result(
        done.stdout,
        "Verify the sealed state against the store's newest manifest, test-unseal it and cache it here",
        NODE,
    )
    assert verified["manifest"]["version"] == 1 and all(blob["ok"] for blob in verified["blobs"])
    shutil.copytree(backup, lab.vm_dir(other, VMID))
    before = lab.snapshot()
    refused = lab.run(restore, "-e", f"ironclaw_node={other}", *vm, expect_fail=True)
    assert f"The store records VM {VMID} on {NODE}, not on {other}" in refused.stdout
    assert "PlacementError" in refused.stdout
    assert lab.snapshot() == before
