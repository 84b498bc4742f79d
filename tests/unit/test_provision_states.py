"""The node side of ironclaw_provision (module_utils/_ansible/provision_states.py), on the software backend.

``sealed`` seals, test-unseals every blob of the VM and describes the result in one run; a blob that does not
unseal fails the step and nothing is described for the controller to sign.
"""

from __future__ import annotations

import pytest
from software_node import UUID, VMID, SoftwareNode

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, VerificationError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical

# The module's option set comes from ansible-core (controller venv); nodeA of the integration tests runs this
# code under Debian's python3.
pytest.importorskip("ansible", reason="the module's option set comes from ansible-core (controller venv)")

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.provision_states import (  # noqa: E402
    argument_spec,
    sealed,
)

IDENTITY = {"vmid": VMID, "uuid": UUID, "ctime": None, "node": "node-a", "source": "variables", "status": "unknown"}


class Controller(SoftwareNode):
    def params(self, values: dict[str, str], **over) -> dict:
        public, _name = self.keys.public(VMID, UUID)
        p = argument_spec().defaults()
        p.update(
            step="sealed",
            backend="software",
            state_dir=self.state_dir,
            identity=IDENTITY,
            node_name="node-a",
            policy={"migratable": True},
            policy_key=canonical.b64encode(public),
            approval=self.approval,
            secrets=[
                {"name": name, "content": value, "src": None, "content_base64": None} for name, value in values.items()
            ],
        )
        p.update(over)
        return p


@pytest.fixture
def controller(tmp_path) -> Controller:
    return Controller(tmp_path)


def test_sealed_step_seals_test_unseals_and_describes_in_one_run(controller):
    out = sealed(controller.params({"api-token": "one", "db-pass": "two"}), False)
    assert out["changed"] is True and out["keyslot"]["action"] == "created"
    assert sorted(out["verified"]) == ["api-token", "db-pass"]
    statement = out["statement"]
    assert statement["subject"]["vm_uuid"] == UUID and statement["node"]["name"] == "node-a"
    assert sorted(b["name"] for b in statement["blobs"]) == ["api-token", "db-pass"]
    again = sealed(controller.params({"api-token": "one", "db-pass": "two"}), False)
    assert again["changed"] is False and again["statement"] == statement


def test_sealed_step_in_check_mode_on_a_fresh_vm_writes_nothing(controller):
    before = controller.files()
    out = sealed(controller.params({"api-token": "one"}, policy_key=None, approval=None), True)
    assert out["changed"] is True and out["keyslot"] == {"action": "created"} and out["statement"] is None
    assert not controller.vm_dir().exists()
    assert controller.files() == before


def test_tampered_blob_fails_the_sealed_step_and_nothing_is_described(controller):
    sealed(controller.params({"api-token": "one", "db-pass": "two"}), False)
    blob = controller.vm_dir() / "db-pass.sealed"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    blob.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in controller.vm_dir().iterdir()}
    # Only api-token is asked for: every blob of the VM is still test-unsealed, db-pass included.
    with pytest.raises(VerificationError, match="1 blob\\(s\\) did not verify: .*db-pass"):
        sealed(controller.params({"api-token": "one"}), False)
    assert {p.name: p.read_bytes() for p in controller.vm_dir().iterdir()} == before


def test_sealed_step_needs_the_identity_settled_first(controller):
    with pytest.raises(InputError, match="step=sealed needs identity"):
        sealed(controller.params({"api-token": "one"}, identity=None), False)
