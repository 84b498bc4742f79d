# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's decisions on node records (DESIGN §7, A4): which record it signs at enrollment,
and whether a record read from the store is a valid record of a given node.

Every read checks the signature against the controller's own trust root (never
the store's copies) and the node's name inside the signed payload, so the store
host can neither forge a record nor swap one node's record for another's.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    FormatError,
    InputError,
    PlacementError,
    ThresholdError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.trust_root import TrustRoot
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.node_record import (
    NODE_PAYLOAD_TYPE,
    OLD_NODE_RECORD_FORMAT,
    NodeRecord,
    parse_node_record,
    reenroll_message,
)

CLOCK_SKEW = timedelta(minutes=5)


def verify_node_record(envelope_doc, root: TrustRoot, node_name: str, now: datetime) -> NodeRecord:
    """The record of ``node_name`` if a threshold of ``root``'s keys signed it; refuses anything else.

    ``envelope_doc`` is the envelope (dict, bytes or Envelope) as read from the store.
    """
    what = f"node record of '{node_name}'"
    if isinstance(envelope_doc, dict) and envelope_doc.get("format") == OLD_NODE_RECORD_FORMAT:
        raise FormatError(reenroll_message(what))
    envelope = envelope_doc if isinstance(envelope_doc, dsse.Envelope) else dsse.parse_envelope(envelope_doc, what)
    payload = dsse.verify_threshold(
        envelope, NODE_PAYLOAD_TYPE, root.keys, root.threshold, f"{what} (trust root version {root.version})"
    )
    record = parse_node_record(payload, what)
    if record.node != node_name:
        raise VerificationError(
            f"{what}: the store holds the signed record of node '{record.node}' under this name (swapped); "
            "refusing it; restore the store's nodes/ directory or re-enroll the node"
        )
    if canonical.parse_timestamp(record.enrolled_at, f"{what}: enrolled_at") > now + CLOCK_SKEW:
        raise VerificationError(f"{what}: enrolled at {record.enrolled_at}, in the future; check the clocks")
    return record


def record_to_sign(
    facts: dict,
    node_name: str,
    current: NodeRecord | None,
    replace: bool,
    now: datetime,
    attestation: dict | None = None,
) -> tuple[NodeRecord | None, str]:
    """The record to sign for a node's enrollment, or (None, why not) when the current one stands.

    ``facts`` are the node's ironclaw_node facts (provisioned); ``attestation`` is the evidence of the proof the
    controller just ran against the node (``Proof.record()``, DESIGN §8): a tpm2 node is enrolled only with it, and
    only if it attests this very SRK; a software node has no TPM and no attestation. A node whose SRK differs from
    its enrolled one (TPM cleared or replaced) is re-enrolled only with ``replace``: every VM sealed on it is lost.
    """
    if not facts.get("provisioned"):
        raise InputError(f"node '{node_name}' is not provisioned: run ironclaw_node state=present first")
    if facts["backend"] == "tpm2" and attestation is None:
        raise InputError(
            f"node '{node_name}' has a TPM: it is enrolled with its attestation proof (ironclaw_attest enroll=true, "
            "as the node_enroll role runs it) and nothing else"
        )
    if facts["backend"] != "tpm2" and attestation is not None:
        raise InputError(f"node '{node_name}' uses the {facts['backend']} backend: it has no TPM to attest")
    if attestation is not None and str(attestation.get("srk_name", "")).lower() != str(facts["srk_name"]).lower():
        raise VerificationError(
            f"the attestation proof of '{node_name}' was run against the SRK named "
            f"{str(attestation.get('srk_name'))[:20]}…, but the node reports the SRK {str(facts['srk_name'])[:20]}…: "
            "another TPM answered one of the two; nothing is signed"
        )
    new = NodeRecord(
        node=node_name,
        backend=facts["backend"],
        srk_name=facts["srk_name"],
        srk_public=facts["srk_public"],
        epoch_nv_index=facts.get("epoch_nv_index"),
        epoch_nv_name=facts.get("epoch_nv_name"),
        enrolled_at=canonical.utc_timestamp(now),
        attestation=attestation,
    )
    try:
        new = parse_node_record(new.to_bytes(), f"node record of '{node_name}'")
    except FormatError as err:
        raise InputError(f"the facts of node '{node_name}' do not make a node record: {err}") from None
    if current is None:
        return new, "enrolled"
    if current.comparable() == new.comparable():
        return None, "already enrolled with this SRK"
    if current.srk_name != new.srk_name and not replace:
        raise VerificationError(
            f"{node_name} was enrolled with SRK {current.srk_name}, but its TPM now has SRK {new.srk_name} (TPM "
            "cleared or replaced?). Every VM sealed on it is unrecoverable there. Set node_enroll_replace=true to "
            "record the new SRK."
        )
    if current.attestation is None:
        return new, "enrolled with its attestation evidence"
    return new, "re-enrolled"


def verified_record(envelope_doc, roots: list[TrustRoot], node_name: str, now: datetime) -> NodeRecord:
    """The signed record of ``node_name`` under the controller's roots (every version, newest last).

    A record signed under an older root counts only if it was enrolled before that root's successor was issued:
    keys retired by a rotation sign nothing new. No record at all is an ``InputError`` naming ``enroll``.
    """
    if envelope_doc is None:
        raise InputError(
            f"{node_name} is not enrolled (no signed node record in the store): run ironclaw.sealed.enroll for it "
            "first. Nothing was signed"
        )
    try:
        return verify_node_record(envelope_doc, roots[-1], node_name, now)
    except ThresholdError as newest_refusal:
        for older, successor in zip(roots, roots[1:], strict=False):
            try:
                record = verify_node_record(envelope_doc, older, node_name, now)
            except ThresholdError:
                continue
            if canonical.parse_timestamp(record.enrolled_at, f"node record of '{node_name}'") < successor.issued_at:
                return record
        raise newest_refusal from None


def check_enrolled(record: NodeRecord, node_name: str, srk_name: str) -> None:
    """The node answering now must be the node enrolled: its SRK name is the one the signed record holds."""
    if record.srk_name.lower() != str(srk_name).lower():
        raise PlacementError(
            f"{node_name}'s TPM answers with SRK {str(srk_name)[:20]}…, but its signed record holds "
            f"{record.srk_name[:20]}… (TPM cleared or replaced, or another machine answering under its name?): "
            "nothing is signed for it; re-enroll it deliberately (node_enroll_replace=true) if its TPM was replaced"
        )
