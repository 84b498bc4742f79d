# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_attest: re-run a node's attestation proof (DESIGN §8) and report it link by link.

The node (``ironclaw_node`` state=attested) reports its evidence, then answers a challenge made here: fresh
credentials for its SRK and AK (those of its signed record, wrapped to the recorded EK, once it is enrolled) and a
fresh quote nonce. The controller (module_utils/_attest) checks every link;
the last one compares the SRK with the node's enrolled record, whose signature this action verifies against the
controller's own trust roots (DESIGN §7 A4): the store's word is not taken. With ``enroll`` the record link is left
out and the evidence (``record``) goes to ironclaw_manifest state=enrolled, which signs it into the node record.
The challenge's secrets and the node's answers to them stay in this action: only the links and the public evidence
are returned.
"""

from __future__ import annotations

import base64
import binascii
import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.argspec import (
    DEFAULT_CONTROLLER_DIR,
    ArgumentSpec,
    node_spec,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.attest_states import EK_TYPE_NAMES
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest import ek_trust
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.proof import (
    RECORD_LINK,
    Challenge,
    Evidence,
    Link,
    Proof,
    Trust,
    parse_evidence,
    recorded_identity,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.ledger import controller_roots
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.node_record import verified_record
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    AttestationError,
    FormatError,
    InputError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.action_module import IronclawAction

NODE_MODULE = "ironclaw.sealed.ironclaw_node"
DEFAULT_PCRS = "sha256:0,7"


def argument_spec() -> ArgumentSpec:
    """ironclaw_attest's options: the node's (where its TPM and state are) and the controller's trust in its EK."""
    return node_spec().update_argspec(
        ek_trust={"type": "str", "default": "ca", "choices": list(ek_trust.TRUST_MODES)},
        ek_ca_dir={"type": "path"},
        ek_pin={"type": "str"},
        pcrs={"type": "str", "default": DEFAULT_PCRS},
        node_record={"type": "dict"},
        controller_dir={"type": "path"},
        enroll={"type": "bool", "default": False},
        ek_type={"type": "str", "choices": list(EK_TYPE_NAMES)},
    )


# -- the wire: base64 in the module's arguments and results (attest_states.py) ---------------------------------------
def _unb64(text, what: str) -> bytes:
    try:
        return base64.b64decode(str(text).encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise FormatError(f"{what} is not base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_evidence(attestation: dict, node: str) -> Evidence:
    """The node's state=attested ``attestation`` result, parsed strictly (names recomputed here)."""
    doc = {"ek_type": attestation.get("ek_type")}
    for key in ("ek_certificate", "ek_public", "srk_public", "ak_public"):
        value = attestation.get(key)
        doc[key] = None if value is None else _unb64(value, f"attestation evidence of {node}: {key}")
    for key in ("ek_public", "srk_public", "ak_public"):
        if doc[key] is None:
            raise FormatError(f"attestation evidence of {node}: field {key!r} missing")
    return parse_evidence(doc, node)


def request_args(challenge: Challenge) -> dict:
    """The module arguments that carry the challenge to the node: credentials (encrypted to its EK) and the nonce."""
    req = challenge.request()
    return {
        "credentials": {
            target: {key: _b64(cred[key]) for key in ("id_object", "encrypted_secret")}
            for target, cred in req["credentials"].items()
        },
        "nonce": _b64(req["nonce"]),
        "pcrs": req["pcrs"],
    }


def decode_answers(result: dict, node: str) -> dict:
    """The node's answers (activation secrets or refusals, the quote) as Proof.check_answers takes them."""
    answers: dict = {}
    for target, answer in (result.get("activation") or {}).items():
        if isinstance(answer, dict) and answer.get("secret") is not None:
            answers[target] = {"secret": _unb64(answer["secret"], f"{node}'s {target} activation")}
        else:
            answers[target] = {"error": (answer or {}).get("error") if isinstance(answer, dict) else None}
    quote = result.get("quote") or {}
    if "attest" in quote:
        answers["quote"] = {
            "attest": _unb64(quote["attest"], f"{node}'s quote"),
            "signature": _unb64(quote["signature"], f"{node}'s quote signature"),
            "pcr_values": {k: bytes.fromhex(v) for k, v in (quote.get("pcr_values") or {}).items()},
        }
    elif quote:
        answers["quote"] = {"error": quote.get("error")}
    return answers


def check_record(proof: Proof, record) -> None:
    """The last link: the SRK that just proved itself is the one the node's signed record was enrolled with."""
    srk = proof.evidence.srk.name.hex()
    if not record:
        detail = (
            f"the store holds no enrolled record of {proof.node} (enroll it first: playbook ironclaw.sealed.enroll)"
        )
    elif record.srk_name.lower() != srk:
        detail = (
            f"{proof.node} was enrolled with the SRK named {record.srk_name} "
            f"({record.enrolled_at}), but its TPM now holds the SRK named {srk}: "
            "the TPM was replaced or cleared, so the node cannot unseal what was sealed for it; re-enroll it "
            "(enroll with replace) and recover its VMs from backup or another node"
        )
    else:
        proof.links.append(
            Link(RECORD_LINK, True, f"the SRK is the one enrolled at {record.enrolled_at} ({srk[:20]}…)")
        )
        return
    proof.links.append(Link(RECORD_LINK, False, detail))
    raise AttestationError(detail, link=RECORD_LINK)


def report(proof: Proof) -> list[dict]:
    return [
        {"name": link.name, "passed": link.passed, "detail": link.detail, "line": link.line()} for link in proof.links
    ]


class ActionModule(IronclawAction):
    argument_spec = staticmethod(argument_spec)

    def run_action(self, args: dict) -> dict:
        node = self._vars.get("inventory_hostname") or "this node"
        self.require_crypto()
        now = clock(None)
        controller_dir = os.path.expanduser(
            args["controller_dir"]
            or self._templar.template(self._vars.get("ironclaw_controller_dir", DEFAULT_CONTROLLER_DIR))
        )
        # A4: the record counts only once this controller's trust roots verified it for this node.
        record = None
        if args["node_record"] is not None:
            record = verified_record(args["node_record"], controller_roots(controller_dir, now), node, now)
        if args["backend"] != "tpm2" or (record is not None and record.backend == "software"):
            if args["enroll"] and args["backend"] != "tpm2":
                return {
                    "changed": False,
                    "links": [],
                    "record": None,
                    "msg": f"{node} uses the software backend: no TPM to attest; its record says so (test and "
                    "development nodes only, never a target for a tpm2 VM)",
                }
            raise InputError(
                f"{node} is a software-backend node: it has no TPM, so there is nothing to attest (its keys live in "
                "a file on the node, and it is never a target for a tpm2 VM)"
            )
        trust = Trust(args["ek_trust"], args["ek_ca_dir"] or os.path.join(controller_dir, "ek-ca"), args["ek_pin"])
        selection = PcrSelection.parse(args["pcrs"])
        node_args = {key: args[key] for key in ("state_dir", "backend", "lock_timeout")}
        # The node's own IRONCLAW_TCTI applies unless the task names one.
        node_args.update({key: args[key] for key in ("tcti", "ek_type") if args.get(key) is not None})
        first = self.run_module(NODE_MODULE, dict(node_args, state="attested"))
        if "attestation" not in first:
            # Check mode on a node without an AK: the module only says it would create one.
            return {"changed": first.get("changed", False), "actions": first.get("actions", []), "links": []}
        # With a signed record, the challenge is made for the EK, SRK and AK it holds, not the node's fresh word.
        recorded = None if args["enroll"] or record is None else recorded_identity(record, node)
        proof = Proof(decode_evidence(first["attestation"], node), trust, now, recorded)
        out = {"changed": bool(first.get("changed")), "actions": first.get("actions", [])}
        try:
            proof.check_identity()
            challenge = proof.challenge(selection)
            second = self.run_module(NODE_MODULE, dict(node_args, state="attested", **request_args(challenge)))
            proof.check_answers(challenge, decode_answers(second, node))
            del challenge, second  # the secrets and the node's answers end here
            if not args["enroll"]:
                check_record(proof, record)
        except AttestationError as err:
            out.update(failed=True, msg=str(err) + pin_hint(args, proof, err), error=type(err).__name__)
            out.update(links=report(proof), link=err.link)
            return out
        out.update(links=report(proof), record=proof.record(), msg=f"{node}: every link of the proof passed")
        return out


def pin_hint(args: dict, proof: Proof, err: AttestationError) -> str:
    """An EK whose certificate does not verify (or is missing) may be pinned instead: say the value and how. Only
    there: a failure at any later link is a reason to trust this TPM less, not to pin it."""
    if err.link != "EK certificate chain":
        return ""
    return (
        f". If this TPM is genuine and its EK certificate cannot be verified, pin its EK instead: set "
        f"ironclaw_ek_trust: pin and ironclaw_ek_pin: '{ek_trust.ek_pin(proof.evidence.ek)}' for {proof.node}"
    )
