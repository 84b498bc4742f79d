"""ironclaw_seal's node states (module_utils/_seal/module_backends/): plan() changes nothing, apply() makes exactly
the planned change, a refusal changes nothing, and a plan never shows the plaintext it holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from software_node import UUID, VMID, SoftwareNode

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import PolicyError, VerificationError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import PolicyKeyStore
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.approved import Approved
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.sealed import Sealed
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.verified import Verified

SECRET = "correct horse battery staple"


class Node(SoftwareNode):
    def params(self, **over) -> dict:
        public, _name = self.keys.public(VMID, UUID)
        p = {
            "state_dir": self.state_dir,
            "tcti": None,
            "backend": "software",
            "lock_timeout": 5.0,
            "vmid": VMID,
            "vm_uuid": UUID,
            "policy": {"migratable": True},
            "policy_key": canonical.b64encode(public),
            "approval": self.approval,
            "secrets": [{"name": "api-token", "content": SECRET, "src": None, "content_base64": None}],
        }
        p.update(over)
        return p


@pytest.fixture
def node(tmp_path) -> Node:
    return Node(tmp_path)


def test_check_mode_returns_the_plan_and_writes_nothing(node):
    before = node.files()
    out = Sealed(node.params(), check_mode=True).run()
    assert out["changed"] is True and out["keyslot"]["action"] == "created"
    assert out["blobs"] == [{"name": "api-token", "generation": 1, "action": "created"}]
    assert node.files() == before


def test_apply_makes_the_planned_change_and_a_second_plan_is_empty(node):
    out = Sealed(node.params(), check_mode=False).run()
    assert out["changed"] is True and out["diff"]["after"]["blobs"] == {"api-token": 1}
    after = node.files()
    again = Sealed(node.params(), check_mode=True).run()
    assert again["changed"] is False
    assert again["diff"]["before"] == {"keyslot": out["keyslot"]["keyslot_id"], "blobs": {"api-token": 1}}
    assert again["diff"]["before"]["blobs"] == again["diff"]["after"]["blobs"]
    assert node.files() == after


def test_changed_secret_is_planned_as_resealed_in_check_mode_and_left_alone(node):
    Sealed(node.params(), check_mode=False).run()
    after = node.files()
    secrets = [{"name": "api-token", "content": "another", "src": None, "content_base64": None}]
    out = Sealed(node.params(secrets=secrets), check_mode=True).run()
    assert out["blobs"] == [{"name": "api-token", "generation": 2, "action": "resealed"}]
    assert node.files() == after


def test_unknown_policy_key_refused_at_plan_nothing_written(node, tmp_path):
    Sealed(node.params(), check_mode=False).run()
    after = node.files()
    other = PolicyKeyStore(str(tmp_path / "other"))
    other.create(VMID, UUID)
    public, _name = other.public(VMID, UUID)
    with pytest.raises(PolicyError, match="unknown policy key"):
        Sealed(node.params(policy_key=canonical.b64encode(public)), check_mode=False).run()
    assert node.files() == after


def test_tampered_blob_fails_verified_naming_it_with_the_blobs_in_the_failure(node):
    Sealed(node.params(), check_mode=False).run()
    blob = Path(node.state_dir, str(VMID), "api-token.sealed")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    blob.write_bytes(bytes(data))
    before = node.files()
    with pytest.raises(VerificationError, match="1 blob\\(s\\) did not verify: .*api-token") as refused:
        Verified(node.params(), check_mode=False).run()
    assert refused.value.details["failed_blobs"] == ["api-token"]
    assert node.files() == before


def test_approval_signed_by_another_policy_key_refused_nothing_installed(node, tmp_path):
    Sealed(node.params(approval=None), check_mode=False).run()
    other = PolicyKeyStore(str(tmp_path / "other"))
    other.create(VMID, UUID)
    forged = node.approve(node.facts.epoch, keys=other)
    before = node.files()
    with pytest.raises(PolicyError):
        Approved(node.params(approval=forged.to_dict()), check_mode=False).run()
    assert node.files() == before


def test_approval_planned_in_check_mode_is_not_installed(node):
    Sealed(node.params(approval=None), check_mode=False).run()
    before = node.files()
    out = Approved(node.params(), check_mode=True).run()
    assert out == {"changed": True, "epoch": node.facts.epoch}
    assert node.files() == before
    assert Approved(node.params(), check_mode=False).run()["changed"] is True
    assert Approved(node.params(), check_mode=True).run()["changed"] is False


def test_printing_a_plan_never_shows_the_plaintext_or_the_vrk(node):
    """A plan holds the plaintext and the VRK in memory; a debug print or a log line of it must show neither."""
    Sealed(node.params(), check_mode=False).run()
    secrets = [{"name": "api-token", "content": "a changed secret", "src": None, "content_base64": None}]
    state = Sealed(node.params(secrets=secrets), check_mode=True)
    with open_backend("software", tcti=None, state_dir=node.state_dir) as state.backend:
        plan = state.plan()
    assert plan.vrk is not None
    shown = repr(plan) + str(plan)
    assert "a changed secret" not in shown and repr(b"a changed secret") not in shown
    assert plan.vrk.hex() not in shown and repr(plan.vrk) not in shown
    unseal = engine.UnsealPlan(dest="/x", files=[], manifest_version=1, writes=[("/x/api-token", SECRET.encode())])
    assert SECRET not in repr(unseal)
