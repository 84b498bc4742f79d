# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the controller may sign: the one place that decides (DESIGN §7 A1-A3).

Every function takes the VM's verified ledger (ledger.VmLedger), the node(s)
involved as the caller identified them, and the controller's own migration
record (journal.GrantedMove), and either returns what to sign under or raises
a typed refusal. Nothing here reads a node's files: the presence of a keyslot
on a node is never a reason to approve it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.journal import GrantedMove
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.ledger import NodeView, VmLedger
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    DecommissionedError,
    ExpiredError,
    InputError,
    LifetimeError,
    PlacementError,
    RecordedPolicyError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import RecordedPolicy, recorded_policy
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.spec import parse_policy

# A migration must finish within this window after its grant; the bundle and the grant's record expire with it.
MAX_MOVE_WINDOW = timedelta(days=7)


def requested_policy(provision: bool, value) -> RecordedPolicy | None:
    """The policy a request states: only provisioning states one; every other request follows the record (A2)."""
    if provision:
        return recorded_policy(parse_policy(value))
    if value not in (None, "", {}):
        raise InputError(
            "policy is only given when provisioning (provision: true): every other approval, grant or manifest "
            "follows the policy the VM's manifest records"
        )
    return None


def _same(a: NodeView, b: NodeView) -> bool:
    return a.name == b.name and a.id == b.id


def _refuse_destroyed(ledger: VmLedger) -> None:
    newest = ledger.newest
    if newest is not None and newest.destroyed:
        raise DecommissionedError(
            f"VM {newest.subject.vmid} ({ledger.vm_uuid}) was decommissioned (tombstone at version "
            f"{newest.version}): nothing can be approved, granted or recorded for it again"
        )


def _pending_move(ledger: VmLedger, move: GrantedMove | None, target: NodeView, now: datetime) -> GrantedMove:
    """The controller's granted move of this VM to ``target`` that still applies, or PlacementError."""
    placement = ledger.placement
    where = f"{ledger.describe()} places it on {placement}"
    if move is None or move.vm_uuid != ledger.vm_uuid:
        raise PlacementError(
            f"{where}, not on {target}, and this controller granted no migration of it: nothing is approved "
            "for a node the ledger does not place the VM on (a copy found there does not count)"
        )
    if not _same(NodeView(move.target_name, move.target_id), target):
        raise PlacementError(
            f"{where}; the migration this controller granted last goes to {move.target_name}, not to {target}: "
            "only that one can complete"
        )
    newest = ledger.newest_ref
    if not _same(NodeView(move.source_name, move.source_id), placement) or (
        move.manifest_version,
        move.manifest_digest,
    ) != (newest.version, newest.digest):
        raise PlacementError(
            f"{where} (v{newest.version}); the migration granted to {target} left from {move.source_name} at "
            f"v{move.manifest_version}: the VM has moved or changed since, so that grant no longer applies"
        )
    if now >= canonical.parse_timestamp(move.not_after, "migration not_after"):
        raise ExpiredError(
            f"the migration of {ledger.describe()} to {target} had to finish by {move.not_after} "
            f"(now {canonical.utc_timestamp(now)}): run the migrate playbook again"
        )
    return move


def _check_pcrs(ledger: VmLedger, policy: RecordedPolicy, pcrs: str | None) -> None:
    if pcrs != policy.pcrs:
        raise RecordedPolicyError(
            f"{ledger.describe()} records PCR selection {policy.pcrs or 'none'}, but the approval was asked for "
            f"{pcrs or 'none'}: every approval binds the recorded selection (read the node's PCRs for "
            f"{policy.pcrs or 'no selection'}); a policy change is an explicit re-provision"
        )


def _check_migratable_kept(ledger: VmLedger, requested: RecordedPolicy) -> None:
    recorded = ledger.policy
    if recorded is not None and requested.migratable != recorded.migratable:
        raise RecordedPolicyError(
            f"{ledger.describe()} records migratable={str(recorded.migratable).lower()}, the request says "
            f"{str(requested.migratable).lower()}: it is fixed when the VM's keyslot is created"
        )


def approve_unseal(
    ledger: VmLedger,
    node: NodeView,
    *,
    pcrs: str | None,
    now: datetime,
    provision: RecordedPolicy | None = None,
    move: GrantedMove | None = None,
) -> RecordedPolicy:
    """A1 + A2: may the controller approve unsealing the VM on ``node``? Returns the policy the approval follows.

    - ``provision``: the VM is being (re-)provisioned on ``node`` with this policy: allowed when the VM has no
      chain yet, or its newest manifest places it on ``node`` (a re-provision may change the PCR selection,
      never ``migratable``).
    - otherwise the newest manifest places the VM on ``node``, or the migration this controller granted last
      goes to ``node`` from where the ledger places the VM and is unexpired (``move``).
    ``pcrs`` is the selection the approval would bind; it must be the recorded (or provisioned) one.
    """
    _refuse_destroyed(ledger)
    placement = ledger.placement
    if provision is not None:
        if placement is not None and not _same(placement, node):
            raise PlacementError(
                f"{ledger.describe()} places it on {placement}: it cannot be provisioned on {node}; migrate it "
                "there (ironclaw.sealed.migrate) instead"
            )
        _check_migratable_kept(ledger, provision)
        policy = provision
    elif placement is None:
        raise PlacementError(
            f"{ledger.describe()}: nothing records it on {node}; provision it (ironclaw.sealed.provision) first"
        )
    elif _same(placement, node):
        policy = ledger.policy
    else:
        _pending_move(ledger, move, node, now)
        policy = ledger.policy
    _check_pcrs(ledger, policy, pcrs)
    return policy


def grant_duplication(
    ledger: VmLedger,
    source: NodeView,
    target: NodeView,
    *,
    now: datetime,
    not_after: datetime,
    issued_at: datetime | None = None,
) -> GrantedMove:
    """A3: may the controller grant moving the VM from ``source`` to ``target``? Returns the move to record."""
    _refuse_destroyed(ledger)
    placement = ledger.placement
    if placement is None:
        raise PlacementError(f"{ledger.describe()}: there is nothing recorded to migrate")
    if not _same(placement, source):
        raise PlacementError(
            f"{ledger.describe()} places it on {placement}, not on {source}: a grant is signed only from the node "
            "the ledger places the VM on"
        )
    if not ledger.policy.migratable:
        raise RecordedPolicyError(
            f"{ledger.describe()} records migratable=false: its keyslot can never leave {placement.name}'s TPM"
        )
    if target.name == source.name or target.id == source.id:
        raise PlacementError(f"the target {target} is the source node itself: a VM cannot migrate to its own node")
    if not_after <= now:
        raise LifetimeError(
            f"the migration window ends at {canonical.utc_timestamp(not_after)}, which is not after now "
            f"({canonical.utc_timestamp(now)})"
        )
    if not_after - now > MAX_MOVE_WINDOW:
        raise LifetimeError(
            f"a migration window of {not_after - now} is longer than the {MAX_MOVE_WINDOW.days} days the "
            "controller grants"
        )
    newest = ledger.newest_ref
    return GrantedMove(
        vmid=ledger.newest.subject.vmid,
        vm_uuid=ledger.vm_uuid,
        source_name=source.name,
        source_id=source.id,
        target_name=target.name,
        target_id=target.id,
        manifest_version=newest.version,
        manifest_digest=newest.digest,
        not_after=canonical.utc_timestamp(not_after),
        issued_at=canonical.utc_timestamp(issued_at or now),
    )


def manifest_policy(
    ledger: VmLedger,
    statement: dict,
    *,
    now: datetime,
    provision: RecordedPolicy | None = None,
    move: GrantedMove | None = None,
) -> RecordedPolicy:
    """A1 + A2 for manifests: may the controller sign ``statement`` as the VM's next version, and under which policy?

    ``statement`` is what the node described (or the tombstone); its ``policy``, if any, is ignored: the
    policy recorded is the provisioned one (a first version or an explicit re-provision) or the recorded one.
    """
    _refuse_destroyed(ledger)
    node = NodeView(statement["node"]["name"], statement["node"]["id"].lower())
    placement = ledger.placement
    migration = statement.get("migration")
    if placement is None:
        if provision is None:
            raise RecordedPolicyError(
                f"{ledger.describe()}: its first manifest records the policy it was provisioned with; "
                "provision it (ironclaw.sealed.provision)"
            )
        if migration is not None or statement.get("state") != "active":
            raise PlacementError(f"{ledger.describe()}: a first manifest cannot record a migration or a tombstone")
        return provision
    if migration is not None:
        if provision is not None:
            raise RecordedPolicyError("a migration keeps the VM's recorded policy: it cannot change it")
        granted = _pending_move(ledger, move, node, now)
        if (migration["source"], migration["target"]) != (granted.source_name, granted.target_name):
            raise PlacementError(
                f"the statement records a migration {migration['source']} -> {migration['target']}, but this "
                f"controller granted {granted.source_name} -> {granted.target_name}"
            )
        return ledger.policy
    if not _same(placement, node):
        raise PlacementError(
            f"{ledger.describe()} places it on {placement}: a manifest placing it on {node} is signed only with "
            "the migration this controller granted (run ironclaw.sealed.migrate)"
        )
    if provision is None or statement.get("state") != "active":
        return ledger.policy
    _check_migratable_kept(ledger, provision)
    return provision


def sort_survivors(
    ledgers: dict[str, VmLedger], vms: list[dict], node: NodeView, now: datetime
) -> tuple[list[dict], list[dict]]:
    """After an epoch bump on ``node``: (the VMs to re-approve, with their recorded PCR selection, creation time and
    cluster; the VMs refused).

    Only VMs whose newest manifest places them on ``node`` are re-approved; a keyslot the ledger does not
    place there (a copy restored from a backup, a VM that moved away) is refused and reported.
    """
    placed, refused = [], []
    for vm in vms:
        ledger = ledgers[vm["vm_uuid"]]
        try:
            _refuse_destroyed(ledger)
            if ledger.placement is None or not _same(ledger.placement, node):
                raise PlacementError(
                    f"{ledger.describe()} places it on {ledger.placement or 'no node'}, not on {node}: its keyslot "
                    "here is not re-approved"
                )
        except (PlacementError, DecommissionedError) as err:
            refused.append({"vmid": vm["vmid"], "vm_uuid": vm["vm_uuid"], "reason": str(err)})
            continue
        subject = ledger.newest.subject
        # The recorded creation time and cluster: what the VM's next statement must say again.
        placed.append(
            {
                "vmid": vm["vmid"],
                "vm_uuid": vm["vm_uuid"],
                "pcrs": ledger.policy.pcrs,
                "vm_ctime": subject.vm_ctime,
                "cluster": subject.cluster,
            }
        )
    return placed, refused
