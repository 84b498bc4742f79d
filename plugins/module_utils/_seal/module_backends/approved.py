# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""state=approved: an approval checked against the keyslot and node, installed as approval.json."""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.base import PlannedState


@dataclass
class ApprovalPlan:
    changed: bool
    epoch: int

    def result(self) -> dict:
        return {"changed": self.changed, "epoch": self.epoch}


class Approved(PlannedState):
    def plan(self) -> ApprovalPlan:
        return ApprovalPlan(**engine.plan_approval(self.backend, self.vm, self.approval))

    def apply(self, plan: ApprovalPlan) -> dict:
        return engine.apply_approval(self.vm, self.approval, plan.result())
