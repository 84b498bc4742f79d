"""A provisioned software-backend node and one VM's policy key on the controller, as provisioning's planned step
leaves them: the node side of ironclaw_seal and ironclaw_provision is tested on it."""

from __future__ import annotations

from pathlib import Path

from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.signer import PolicyKeyStore, sign_approval

VMID = 100
UUID = "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"


class SoftwareNode:
    def __init__(self, root: Path):
        self.state_dir = str(root / "state")
        self.keys = PolicyKeyStore(str(root / "controller"))
        self.keys.create(VMID, UUID)
        with open_backend("software", tcti=None, state_dir=self.state_dir) as backend:
            backend.provision()
            self.facts = backend.facts()
        self.approval = self.approve(self.facts.epoch).to_dict()

    def approve(self, epoch: int, keys: PolicyKeyStore | None = None):
        return sign_approval(
            (keys or self.keys).load(VMID, UUID),
            vmid=VMID,
            vm_uuid=UUID,
            node_name=self.facts.node_name,
            epoch_nv_name=self.facts.epoch_nv_name,
            epoch=epoch,
        )

    def files(self) -> dict[str, bytes]:
        """The node's state (lock files hold none)."""
        root = Path(self.state_dir)
        files = [p for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts]
        return {str(p.relative_to(root)): p.read_bytes() for p in files}

    def vm_dir(self) -> Path:
        return Path(self.state_dir, str(VMID))
