# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deciding the next manifest of a VM: a new version only when its sealed state changed or it nears expiry."""

from __future__ import annotations

from datetime import datetime, timedelta

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import (
    Manifest,
    new_manifest,
    parse_manifest,
    statement_of,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import envelope_digest


def next_manifest(
    statement: dict,
    previous: dsse.Envelope | None,
    *,
    now: datetime,
    expires_days: int,
    resign_days: int,
) -> tuple[Manifest | None, str]:
    """(the manifest to sign, why) or (None, why not).

    `previous` is the VM's newest envelope, verified by the caller (the ledger); the store checks the
    chain again when the new one is put, so its payload is read unverified here.
    """
    if expires_days < 1 or resign_days < 0 or resign_days >= expires_days:
        raise InputError(
            f"manifest lifetime {expires_days} days and re-sign window {resign_days} days do not fit "
            "(need expires_days >= 1 and 0 <= resign_days < expires_days)"
        )
    expires = now + timedelta(days=expires_days)
    if previous is None:
        return new_manifest(statement, version=1, prev=None, issued_at=now, expires=expires), "first version"
    prior = parse_manifest(previous.payload, "the store's newest manifest")
    if prior.destroyed:
        raise InputError(
            f"VM {prior.subject.vmid} ({prior.subject.vm_uuid}) was decommissioned: its chain ends in a tombstone"
        )
    left = canonical.parse_timestamp(prior.expires, "manifest expires") - now
    recorded = statement_of(prior)
    if "migration" not in statement:
        # A migration is recorded once, in the version that moved the VM; later versions do not repeat it.
        recorded.pop("migration", None)
    if recorded == statement:
        if left > timedelta(days=resign_days):
            return None, f"unchanged (version {prior.version})"
        reason = f"re-issued: version {prior.version} expires in {max(left.days, 0)} days"
    else:
        reason = f"sealed state changed since version {prior.version}"
    manifest = new_manifest(
        statement, version=prior.version + 1, prev=envelope_digest(previous), issued_at=now, expires=expires
    )
    return manifest, reason
