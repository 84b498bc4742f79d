# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""state=verified: every blob test-unsealed in memory; changes nothing, fails naming the blobs that do not verify."""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, VerificationError
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.base import PlannedState


@dataclass
class Verification:
    blobs: list[dict]
    failed_blobs: list[str]
    changed: bool = False

    def result(self) -> dict:
        return {"changed": False, "blobs": self.blobs, "failed_blobs": self.failed_blobs}


def failure(vmid: int, blobs: list[dict], failed: list[str]) -> Exception | None:
    """The refusal when a blob did not verify or there is none; its details go into the failed result."""
    if failed:
        details = "; ".join(b["error"] for b in blobs if not b["ok"])
        exc = VerificationError(f"VM {vmid}: {len(failed)} blob(s) did not verify: {details}")
    elif not blobs:
        exc = InputError(f"VM {vmid} has a keyslot but no sealed secrets to verify")
    else:
        return None
    exc.details = {"blobs": blobs, "failed_blobs": failed}
    return exc


class Verified(PlannedState):
    def plan(self) -> Verification:
        checked = engine.verify(self.backend, self.vm, self.approval)
        refusal = failure(self.vm.vmid, checked["blobs"], checked["failed"])
        if refusal is not None:
            raise refusal
        return Verification(checked["blobs"], checked["failed"])

    def apply(self, plan: Verification) -> dict:
        return plan.result()
