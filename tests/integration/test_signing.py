"""Air-gapped signing through the playbooks (DESIGN §7, A10): only confirmed requests are signed, lifetimes are
bounded, and with offline signing a decommission's tombstone and receipt go through the same exchange.

Each scenario has its own small lab: an offline signer (its own controller directory with the trust-root keys),
a controller holding only the public trust root, and one software-backend node.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playbook_rig import Lab, Node, lab_from_template, tree, vm_uuid_of

from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy.receipt import verify_receipt
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, requests
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import new_manifest, parse_manifest
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import load_chain

pytestmark = pytest.mark.swtpm  # needs the playbook tools that come with the swtpm rig

NODE = "nodeB"


class Offline:
    """A lab whose trust-root keys live on a separate (offline) signer."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.signer = lab.root / "offline-signer"
        self.sign_dir = lab.root / "exchange"
        self.vars = ("-e", "ironclaw_signing=offline", "-e", f"ironclaw_sign_dir={self.sign_dir}")

    def sign(self, *confirm: str, expect_fail: bool = False):
        extra = ("-e", json.dumps({"ironclaw_sign_confirm": list(confirm)})) if confirm else ()
        return self.lab.run(
            "sign",
            "-e",
            f"ironclaw_controller_dir={self.signer}",
            "-e",
            f"ironclaw_sign_dir={self.sign_dir}",
            *extra,
            expect_fail=expect_fail,
        )

    def pending(self) -> list[requests.Request]:
        return requests.pending_requests(str(self.sign_dir))

    def provision(self, vmid: int):
        """Provision through the exchange: request, sign it (confirmed), re-run."""
        self.lab.provision(NODE, vmid, expect_fail=True, extra=self.vars)
        (request,) = [r for r in self.pending() if r.document.subject.vmid == vmid]
        self.sign(request.digest[:16])
        self.lab.provision(NODE, vmid, extra=self.vars)


@pytest.fixture
def offline(tmp_path, playbook_tools):
    def build(lab: Lab) -> None:
        rig = Offline(lab)
        lab.run("init", "-e", f"ironclaw_controller_dir={rig.signer}")
        (lab.controller_dir / "trust").mkdir(parents=True)
        for root in (rig.signer / "trust").glob("root-*.json"):
            shutil.copy(root, lab.controller_dir / "trust" / root.name)
        shutil.copytree(rig.signer / "head-keys", lab.controller_dir / "head-keys")
        lab.run("init", "-e", f"ironclaw_controller_dir={lab.controller_dir}", *rig.vars)
        # The node record goes through the exchange like everything the trust root signs.
        lab.run("enroll", *rig.vars, expect_fail=True)
        (node_request,) = rig.pending()
        assert node_request.kind == "node-record" and node_request.document.node == NODE
        rig.sign(node_request.digest[:16])
        lab.run("enroll", *rig.vars)
        for done in rig.sign_dir.iterdir():  # consumed: the tests start from an empty exchange
            done.unlink()

    with lab_from_template(tmp_path, ("offline",), [(NODE, "software", sys.executable)], build) as lab:
        yield Offline(lab)


def signed_files(sign_dir: Path) -> list[str]:
    return sorted(p.name for p in sign_dir.glob("*.signed.json"))


def test_sign_without_confirmation_signs_nothing(offline: Offline):
    lab = offline.lab
    for vmid in (100, 101):
        lab.provision(NODE, vmid, expect_fail=True, extra=offline.vars)
    assert len(offline.pending()) == 2
    before = tree(offline.sign_dir)
    # ansible-playbook runs without a terminal here: the prompt cannot be answered, so nothing is confirmed.
    run = offline.sign()
    assert "nothing confirmed, nothing signed" in run.stdout
    assert tree(offline.sign_dir) == before and signed_files(offline.sign_dir) == []
    # What would have been signed was shown, every field of it.
    for request in offline.pending():
        summary = request.summary
        for shown in (request.digest, summary["node"]["id"], summary["expires"], summary["issued_at"]):
            assert shown in run.stdout
    assert '"cluster": "default"' in run.stdout and '"generation": 1' in run.stdout


def test_sign_confirm_signs_only_the_confirmed_request(offline: Offline):
    lab = offline.lab
    for vmid in (100, 101):
        lab.provision(NODE, vmid, expect_fail=True, extra=offline.vars)
    first, second = sorted(offline.pending(), key=lambda r: r.document.subject.vmid)
    run = offline.sign(second.digest[:16])
    assert second.digest in run.stdout
    assert signed_files(offline.sign_dir) == [Path(second.signed_path).name]
    assert [r.digest for r in offline.pending()] == [first.digest]
    # A prefix that names no pending request (the one already signed) fails and signs nothing more.
    before = tree(offline.sign_dir)
    refused = offline.sign(first.digest[:16], second.digest[:16], expect_fail=True)
    assert "matches no pending request" in refused.stdout
    assert tree(offline.sign_dir) == before


def test_ten_year_expiry_is_refused(offline: Offline):
    lab = offline.lab
    lab.provision(NODE, 100, expect_fail=True, extra=offline.vars)
    (request,) = offline.pending()
    # A request for the same statement valid for ten years, as a tampered exchange or a careless controller makes it.
    m = request.document
    issued = datetime.now(UTC).replace(microsecond=0)
    statement = json.loads(m.to_bytes())
    statement = {k: statement[k] for k in ("subject", "node", "keyslot", "blobs", "state", "policy")}
    long_lived = new_manifest(statement, version=1, prev=None, issued_at=issued, expires=issued + timedelta(days=3650))
    Path(request.path).unlink()
    _none, path = requests.exchange(str(offline.sign_dir), long_lived)
    digest = requests.read_request(path).digest
    before = tree(offline.sign_dir)
    refused = offline.sign(digest[:16], expect_fail=True)
    assert "3650 days" in refused.stdout and "ironclaw_manifest_max_days" in refused.stdout
    assert tree(offline.sign_dir) == before and signed_files(offline.sign_dir) == []
    # The signer's bound cannot be raised past 366 days either.
    too_far = lab.run(
        "sign",
        "-e",
        f"ironclaw_controller_dir={offline.signer}",
        "-e",
        f"ironclaw_sign_dir={offline.sign_dir}",
        "-e",
        "ironclaw_manifest_max_days=3650",
        "-e",
        json.dumps({"ironclaw_sign_confirm": [digest[:16]]}),
        expect_fail=True,
    )
    assert "366" in too_far.stdout and signed_files(offline.sign_dir) == []


def test_online_signing_refuses_a_lifetime_beyond_max_days(tmp_path, playbook_tools):
    lab = Lab(tmp_path, [Node(NODE, "software", tmp_path / NODE, sys.executable)])
    lab.run("init", "-e", f"ironclaw_controller_dir={lab.controller_dir}")
    lab.run("enroll")
    refused = lab.provision(NODE, 100, expect_fail=True, extra=("-e", "ironclaw_manifest_expires_days=91"))
    assert "beyond ironclaw_manifest_max_days (90 days)" in refused.stdout
    assert not lab.store_chain(NODE, 100)
    lab.provision(NODE, 100, extra=("-e", "ironclaw_manifest_expires_days=120", "-e", "ironclaw_manifest_max_days=120"))
    assert len(lab.store_chain(NODE, 100)) == 1


def test_offline_decommission_completes_through_the_exchange(offline: Offline):
    lab = offline.lab
    vmid, uuid = 100, vm_uuid_of(NODE, 100)
    offline.provision(vmid)
    store = lab.controller_dir / "store"

    stopped = lab.run("decommission", "-e", f"ironclaw_vmid={vmid}", *offline.vars, expect_fail=True)
    assert not lab.vm_dir(NODE, vmid).exists(), "the node was cleaned before the run stopped"
    pending = offline.pending()
    assert sorted(r.kind for r in pending) == ["manifest", "receipt"]
    for request in pending:
        assert request.digest in stopped.stdout
    assert "ironclaw.sealed.sign" in stopped.stdout and "re-run" in stopped.stdout
    assert not list((store / "receipts").glob(f"{uuid}-*.json"))
    (tombstone_request,) = [r for r in pending if r.kind == "manifest"]
    assert tombstone_request.document.destroyed

    # The same run again before signing changes nothing and asks for the same requests.
    nodes = tree(lab.nodes[NODE].state_dir)
    again = lab.run("decommission", "-e", f"ironclaw_vmid={vmid}", *offline.vars, expect_fail=True)
    assert sorted(r.digest for r in offline.pending()) == sorted(r.digest for r in pending)
    assert all(r.digest in again.stdout for r in pending)

    offline.sign(*(r.digest[:16] for r in pending))
    lab.run("decommission", "-e", f"ironclaw_vmid={vmid}", *offline.vars)
    assert tree(lab.nodes[NODE].state_dir) == nodes, "the re-run destroyed nothing twice"

    chain = lab.store_chain(NODE, vmid)
    end = dsse.parse_envelope(chain[-1].read_bytes(), chain[-1].name)
    assert parse_manifest(end.payload, "end").destroyed and end.payload == tombstone_request.payload
    roots = [dsse.parse_envelope(p.read_bytes(), p.name) for p in sorted((store / "trust").glob("root-*.json"))]
    root = load_chain(roots, datetime.now(UTC))
    (stored,) = sorted((store / "receipts").glob(f"{uuid}-*.json"))
    receipt = verify_receipt(dsse.parse_envelope(stored.read_bytes(), stored.name), root)
    assert receipt["final"] is True
    assert {loc["node"]: loc["status"] for loc in receipt["locations"]} == {NODE: "destroyed"}
    assert receipt["tombstone"]["version"] == len(chain)
    assert receipt["tombstone"]["payload_sha256"] == tombstone_request.digest
    assert base64.b64decode(json.loads(stored.read_text())["payload"]) == next(
        r.payload for r in pending if r.kind == "receipt"
    )

    # And once more: nothing left to do, nothing new stored.
    lab.run("decommission", "-e", f"ironclaw_vmid={vmid}", *offline.vars)
    assert len(list((store / "receipts").glob(f"{uuid}-*.json"))) == 1
