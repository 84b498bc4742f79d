# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where an approval's PCR values come from (DESIGN §8): a quote verified with the AK of the node's signed record.

A node that reads its own PCRs and reports them could report anything; an approval bound to such values binds the
node's word. A quote is signed by the AK, which the enrollment proof showed to live in the node's TPM, over this
controller's fresh nonce, so the values whose digest it signs are the TPM's. Nothing here talks to a node.
"""

from __future__ import annotations

import secrets

from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.proof import NONCE_SIZE
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.quote import verify_quote
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.tpm_public import parse_tpm2b_public
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, QuoteError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def quote_request(selection: str, nonce: bytes) -> dict:
    """ironclaw_node's arguments for the quote (besides where the node's TPM and state are)."""
    return {"state": "quoted", "pcrs": str(PcrSelection.parse(selection)), "nonce": canonical.b64encode(nonce)}


def quoted_binding(record, selection: str, nonce: bytes, result: dict, node: str) -> dict:
    """The PCR binding an approval takes ({selection, digest, values}), from ironclaw_node state=quoted's ``result``
    once the quote verified under the AK of ``record`` (the node's verified NodeRecord); QuoteError otherwise."""
    if record.attestation is None:
        raise QuoteError(
            f"{node} was enrolled before attestation: its signed record holds no AK to verify a quote with, so no "
            "PCR value it reports can be bound into an approval; re-enroll it (ironclaw.sealed.enroll)"
        )
    parsed = PcrSelection.parse(selection)
    ak = parse_tpm2b_public(
        canonical.b64decode(record.attestation["ak_public"], f"{node}'s AK"), f"{node}'s AK from its record"
    )
    quote = result.get("quote") or {}
    if "attest" not in quote:
        raise QuoteError(f"{node} returned no quote ({quote.get('error') or 'no answer'})")
    values = {key: canonical.hex_bytes(value, f"{node}'s PCR {key}") for key, value in quote["pcr_values"].items()}
    info = verify_quote(
        ak,
        canonical.b64decode(quote["attest"], f"{node}'s quote"),
        canonical.b64decode(quote["signature"], f"{node}'s quote signature"),
        nonce,
        parsed,
        values,
        node,
    )
    return {"selection": str(parsed), "digest": info.pcr_digest.hex(), "values": quote["pcr_values"]}


def approval_binding(facts: dict, record, node: str) -> dict | None:
    """The PCR binding an approval takes from a node's step result: its quote (``pcr_quote``: selection, nonce and
    the node's answer), verified with the AK of ``record``; PCR values the node reports without a quote bind
    nothing and are refused; neither binds none. ``record`` (the node's verified NodeRecord) is needed only with a
    quote."""
    quoted = facts.get("pcr_quote")
    if not quoted:
        if facts.get("pcrs"):
            raise InputError(f"{node}'s PCR values come with a quote only (step identified, tpm2 backend)")
        return None
    nonce = canonical.b64decode(quoted["nonce"], "pcr_quote.nonce")
    return quoted_binding(record, quoted["selection"], nonce, quoted, node)
