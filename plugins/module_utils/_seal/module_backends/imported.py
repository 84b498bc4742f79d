# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""state=imported (the target of a migration): the bundle checked (against the signed manifest when given), the
keyslot re-bound under this node, every blob test-unsealed in memory, and only then the VM's files written."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.bundle_check import verify_bundle
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.node_check import as_envelopes
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import parse_ref
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import transfer
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.base import NodeState


class Imported(NodeState):
    """Planning and writing are one pass in transfer.import_vm (check mode stops it before anything is written,
    after the test-unseal): a separate plan() would import the keyslot into the TPM twice."""

    def _bundle_check(self, now):
        """The manifest rules on the bundle, when the signed manifest it was exported from is given."""
        p = self.params
        if p["envelope"] is None:
            return None
        envelope = dsse.parse_envelope(p["envelope"], "manifest")
        roots = as_envelopes(p["trust_roots"], "trust root")
        floor = parse_ref(p["floor"], "floor") if p["floor"] else None

        def verify(bundle):
            verify_bundle(
                p["state_dir"],
                bundle,
                envelope=envelope,
                offered_roots=roots,
                floor=floor,
                cluster=p["cluster"],
                vm_ctime=p["vm_ctime"],
                now=now,
            )

        return verify

    def plan_and_apply(self) -> dict:
        p = self.params
        now = clock(p["now"])
        return transfer.import_vm(
            self.backend,
            self.vm,
            self.approval,
            path=p["bundle"] or transfer.bundle_path(p["state_dir"], self.vm.vmid, self.vm.vm_uuid),
            now=now,
            check_mode=self.check_mode,
            verify=self._bundle_check(now),
        )
