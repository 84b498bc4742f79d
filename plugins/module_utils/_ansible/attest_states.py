# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_node state=attested and state=quoted: the node's half of attestation (DESIGN §8) in module terms.

Binary values travel as base64 (names and PCR values as hex, like the other
facts). The node decides nothing: it reports evidence, answers credentials and
quotes; module_utils/_attest on the controller checks them.
"""

from __future__ import annotations

import base64
import binascii

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import ensure_dir
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.lock import locked
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.ek import EK_TYPES

ATTEST_STATES = ("attested", "quoted")
EK_TYPE_NAMES = tuple(name for _index, name in EK_TYPES)
MAX_NONCE = 64  # TPM2B_DATA of a quote holds at most a digest or so


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data is not None else None


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(str(text).encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise InputError(f"{what} must be base64 (standard alphabet)") from None


def _nonce(params: dict) -> bytes | None:
    if params.get("nonce") is None:
        return None
    nonce = _unb64(params["nonce"], "nonce")
    if not 8 <= len(nonce) <= MAX_NONCE:
        raise InputError(f"nonce must hold 8 to {MAX_NONCE} bytes, found {len(nonce)}")
    return nonce


def run_attest_state(params: dict, check_mode: bool) -> dict:
    """What state=attested or state=quoted returns: changed, actions, and attestation/activation/quote."""
    from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.attest import (  # noqa: PLC0415 - tpm2 only
        AK_HANDLE,
        Attestor,
        answer_challenge,
    )
    from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.context import resolve_tcti  # noqa: PLC0415
    from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode  # noqa: PLC0415

    if params["backend"] != "tpm2":
        raise InputError(
            f"state={params['state']} needs the tpm2 backend: software-backend nodes have no TPM to attest and are "
            "recorded as such"
        )
    nonce = _nonce(params)
    pcrs = PcrSelection.parse(params.get("pcrs") or "sha256:0,7")
    if params["state"] == "quoted" and nonce is None:
        raise InputError("state=quoted needs nonce (base64, drawn fresh by the controller for this quote)")
    result: dict = {"changed": False, "actions": []}
    attested = params["state"] == "attested"
    with (
        TpmNode(resolve_tcti(params["tcti"])) as node,
        Attestor(node, params.get("ek_type"), with_certificate=attested) as attestor,
    ):
        if attested:
            if not attestor.ak_present():
                result["actions"] = [f"create the attestation key under the EK and persist it at 0x{AK_HANDLE:08x}"]
                result["changed"] = True
                if check_mode:
                    return result
                ensure_dir(params["state_dir"], 0o700)
                with locked(params["state_dir"], "node", params["lock_timeout"]):
                    evidence = attestor.evidence()
            else:
                evidence = attestor.evidence()
            result["attestation"] = {
                "ek_type": evidence["ek_type"],
                "ek_cert_index": None if evidence["ek_cert_index"] is None else f"0x{evidence['ek_cert_index']:08x}",
                "ek_certificate": _b64(evidence["ek_certificate"]),
                "ek_public": _b64(evidence["ek_public"]),
                "srk_public": _b64(evidence["srk_public"]),
                "srk_name": evidence["srk_name"].hex(),
                "ak_public": _b64(evidence["ak_public"]),
                "ak_name": evidence["ak_name"].hex(),
            }
        credentials = {
            target: {
                "id_object": _unb64(cred["id_object"], f"credentials.{target}.id_object"),
                "encrypted_secret": _unb64(cred["encrypted_secret"], f"credentials.{target}.encrypted_secret"),
            }
            for target, cred in (params.get("credentials") or {}).items()
            if cred
        }
        if credentials and not attested:
            raise InputError("credentials are answered with state=attested")
        if credentials or nonce is not None:
            answers = answer_challenge(attestor, {"nonce": nonce, "pcrs": str(pcrs), "credentials": credentials})
            if credentials:
                result["activation"] = {
                    target: {"secret": _b64(a["secret"])} if "secret" in a else {"error": a["error"]}
                    for target, a in answers.items()
                    if target != "quote"
                }
            quote = answers.get("quote")
            if quote is not None:
                result["quote"] = (
                    {"error": quote["error"]}
                    if "error" in quote
                    else {
                        "pcrs": str(pcrs),
                        "attest": _b64(quote["attest"]),
                        "signature": _b64(quote["signature"]),
                        "pcr_values": {k: v.hex() for k, v in quote["pcr_values"].items()},
                    }
                )
    return result
