# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""state=unsealed: the VM verified against its cached manifest, then each secret written to dest where it differs."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.base import PlannedState


class Unsealed(PlannedState):
    def plan(self) -> engine.UnsealPlan:
        p = self.params
        return engine.plan_unseal(
            self.backend,
            self.vm,
            p["dest"],
            names=p["names"],
            approval=self.approval,
            cluster=p["cluster"],
            vm_ctime=p["vm_ctime"],
            now=clock(p["now"]),
        )

    def apply(self, plan: engine.UnsealPlan) -> dict:
        return engine.apply_unseal(plan)
