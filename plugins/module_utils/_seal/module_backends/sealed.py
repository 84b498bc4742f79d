# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""state=sealed: the keyslot created on first use, each listed secret's blob made to hold exactly its content."""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.spec import parse_policy
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.base import PlannedState


@dataclass
class KeyslotToCreate:
    """Check mode before the VM's policy key exists (provisioning plans it in the same run): only the names are
    known; every blob and the keyslot would be created."""

    names: list[str]
    changed: bool = True

    def result(self) -> dict:
        return {
            "changed": True,
            "keyslot": {"action": "created"},
            "blobs": [{"name": n, "action": "created"} for n in self.names],
        }


class Sealed(PlannedState):
    def __init__(self, params: dict, check_mode: bool, proxmox=None):
        super().__init__(params, check_mode, proxmox)
        self.policy = parse_policy(params["policy"])
        if not params["secrets"]:
            raise InputError("state=sealed needs secrets: a list of {name, src | content | content_base64}")
        self.secrets = engine.load_secrets(params["secrets"])
        key = params["policy_key"]
        self.policy_key = canonical.b64decode(key, "policy_key") if key else None

    def plan(self):
        if self.policy_key is None and self.check_mode and self.vm.keyslot(required=False) is None:
            return KeyslotToCreate([s.name for s in self.secrets])
        return engine.plan_seal(
            self.backend,
            self.vm,
            self.secrets,
            migratable=self.policy.migratable,
            pcrs=self.policy.pcrs,
            policy_key_public=self.policy_key,
            approval=self.approval,
        )

    def apply(self, plan) -> dict:
        return engine.apply_seal(self.backend, plan)
