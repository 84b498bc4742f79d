"""The controller's manifests in a test: sign the next version of a VM's state and cache it on its node.

What the provision and verify playbooks leave on a node: the trust root, the VM's newest signed manifest
(``<state_dir>/<vmid>/manifest.json``) and its floor record, each verified before it is cached.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import Ed25519PrivateKey
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, payload, trust_root
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.node_check import (
    cache_verified,
    verify_on_node,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.state import describe_vm
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import envelope_digest

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
CLUSTER = "lab"
ROOT_KEYS = (Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32),)
# The VM policy every manifest records (DESIGN §7 A2): the test VMs are sealed migratable, without PCRs.
MIGRATABLE = payload.RecordedPolicy(migratable=True, pcrs=None)


class Ledger:
    """One controller's signed chains: the trust root and, per VM uuid, its envelopes (oldest first)."""

    def __init__(self, now: datetime = NOW, cluster: str = CLUSTER, policy=MIGRATABLE):
        self.now, self.cluster, self.policy = now, cluster, policy
        self.root = trust_root.new_root(
            ROOT_KEYS, 1, issued_at=now - timedelta(days=10), expires=now + timedelta(days=365)
        )
        self.chains: dict[str, list] = {}

    def sign(self, state_dir: str, vmid: int, vm_uuid: str, node_name: str, node_id: bytes, migration=None):
        """The next manifest version of the VM's files in state_dir, signed (not cached)."""
        chain = self.chains.setdefault(vm_uuid, [])
        statement = payload.with_policy(
            payload.make_statement(
                describe_vm(state_dir, vmid, vm_uuid),
                vmid=vmid,
                vm_uuid=vm_uuid,
                vm_ctime=None,
                cluster=self.cluster,
                node_name=node_name,
                node_id=node_id,
                migration=migration,
            ),
            self.policy,
        )
        manifest = payload.new_manifest(
            statement,
            version=len(chain) + 1,
            prev=envelope_digest(chain[-1]) if chain else None,
            issued_at=self.now - timedelta(hours=1),
            expires=self.now + timedelta(days=30),
        )
        envelope = dsse.sign(manifest.to_bytes(), payload.MANIFEST_PAYLOAD_TYPE, ROOT_KEYS)
        chain.append(envelope)
        return envelope

    def publish(self, state_dir: str, vmid: int, vm_uuid: str, node_name: str, node_id: bytes, migration=None):
        """Sign the next version, verify it on the node against its files and cache it there (provision does)."""
        envelope = self.sign(state_dir, vmid, vm_uuid, node_name, node_id, migration)
        verify_on_node(
            state_dir,
            vmid=vmid,
            vm_uuid=vm_uuid,
            cluster=self.cluster,
            vm_ctime=None,
            envelope=envelope,
            offered_roots=[self.root],
            floor=None,
            now=self.now,
        )
        cache_verified(state_dir, vmid, envelope, [self.root])
        return envelope

    def latest(self, vm_uuid: str):
        return self.chains[vm_uuid][-1]
