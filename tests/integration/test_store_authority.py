"""The store host as the attacker, through the playbooks (DESIGN §7 A5, A6): a truncated store stops
decommission and verify, naming the VM; a trust root forged in the store never reaches a node."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import pytest
from playbook_rig import DEBIAN_PYTHON, Lab, enrolled_lab, tree, vm_uuid_of

from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import Ed25519PrivateKey
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, trust_root

pytestmark = pytest.mark.swtpm

VMID = 300


@pytest.fixture
def lab(tmp_path, playbook_tools):
    """nodeA on a swtpm (Debian's python), nodeB with the software backend, both enrolled."""
    # pytest closes the fixture's generator, which exits the context
    # pylint: disable-next=contextmanager-generator-missing-cleanup
    with enrolled_lab(tmp_path, [("nodeA", "tpm2", DEBIAN_PYTHON), ("nodeB", "software", sys.executable)]) as lab:
        yield lab


def nodes_tree(lab: Lab) -> dict:
    return tree(*(node.state_dir for node in lab.nodes.values()))


@pytest.mark.parametrize("node", ["nodeA"])
def test_deleted_newest_manifest_stops_decommission_and_verify_names_it(lab: Lab, node: str):
    """Attack 6: the store host deletes the VM's newest manifest, so decommission would miss newer holders."""
    text = lab.root / "rotating.txt"
    text.write_bytes(b"first\n")
    secrets_file = lab.write_secrets("rotating.json", [{"name": "db-pass", "src": str(text)}])
    lab.provision(node, VMID, secrets_file)
    text.write_bytes(b"second\n")
    lab.provision(node, VMID, secrets_file)
    chain = lab.store_chain(node, VMID)
    assert [path.name for path in chain] == ["manifest-00000001.json", "manifest-00000002.json"]
    chain[-1].unlink()
    uuid = vm_uuid_of(node, VMID)

    before = nodes_tree(lab)
    verify = lab.verify(node, VMID, expect_fail=True)
    assert "TruncationError" in verify.stdout and f"VM {uuid}" in verify.stdout, verify.stdout
    assert "newest manifest is version 1, but the head lists version 2" in verify.stdout

    decommission = lab.run("decommission", "-e", f"ironclaw_vmid={VMID}", expect_fail=True)
    assert "TruncationError" in decommission.stdout and f"VM {uuid}" in decommission.stdout, decommission.stdout
    # Nothing destroyed on any node: the VM's files, the epoch and the cache are as they were.
    assert nodes_tree(lab) == before
    assert (lab.vm_dir(node, VMID) / "keyslot.json").is_file()
    assert lab.policy_key(node, VMID).is_file()


def test_forged_root_in_the_store_never_reaches_a_node_with_an_empty_cache(lab: Lab):
    """Attack 3: the store host swaps in its own trust root; a node that holds no root yet must not adopt it."""
    node = "nodeB"
    lab.provision(node, VMID)
    store_root = lab.controller_dir / "store" / "trust" / "root-00000001.json"
    real = store_root.read_bytes()
    forger = Ed25519PrivateKey.generate()
    forged = trust_root.new_root([forger], 1, issued_at=_now(), expires=_now(days=30), head_keys=[forger])
    store_root.write_bytes(dsse.envelope_to_bytes(forged))
    # The node's cache is emptied (a node restored from scratch, or one that never verified).
    node_trust = lab.nodes[node].state_dir / "trust"
    for path in node_trust.iterdir():
        path.unlink()

    refused = lab.verify(node, VMID, expect_fail=True)
    assert "trust/root-00000001.json" in refused.stdout and "altered" in refused.stdout, refused.stdout
    assert list(node_trust.iterdir()) == []

    # The store repaired: the node gets the controller's root (not the store's), and is not stuck with a forgery.
    store_root.write_bytes(real)
    lab.verify(node, VMID)
    controller_roots = {p.name: p.read_bytes() for p in (lab.controller_dir / "trust").iterdir()}
    assert {p.name: p.read_bytes() for p in node_trust.iterdir()} == controller_roots


def _now(days: int = 0) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)
