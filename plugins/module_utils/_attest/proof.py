# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's attestation proof of one node, link by link (DESIGN §8).

1. **EK trust**: the EK certificate chains to ``ironclaw_ek_ca_dir`` (``ca``),
   or the EK public hashes to ``ironclaw_ek_pin`` (``pin``), or nothing (``tofu``,
   recorded as such).
2. **EK public matches its certificate** (``ca``): the EK the TPM created is the
   certified key.
3. **SRK attributes** / **AK attributes**: read from the public areas whose names
   the credentials are bound to (fixedTPM, fixedParent, restricted,
   sensitiveDataOrigin, and decrypt or sign).
4. **SRK activation** / **AK activation**: the node's TPM returned the secret of
   a credential made (here, in software) for the EK and exactly that object's
   name: the object is resident in the TPM that holds the EK.
5. **quote**: the AK signed the requested PCRs with this controller's nonce.

With the node's signed record (:class:`Recorded`, every check after enrollment), links 4 and 5 are made for the
identity the record holds, not the node's fresh evidence: the credentials for the recorded SRK and AK names,
wrapped to the EK whose SHA-256 the record holds (the node's EK public counts only if it hashes to it), and the
quote verified with the recorded AK. A node whose EK, SRK or AK changed since enrollment cannot answer them.

Every check appends a :class:`Link` (passed or failed, in plain words) and a
failure raises its AttestationError subclass, whose message starts with the
link's name. Nothing here touches a TPM, a file or the store.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._attest import ek_trust
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.credential import make_credential
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.quote import QuoteInfo, verify_quote
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.tpm_public import (
    ALG_ECC,
    DECRYPT,
    FIXED_PARENT,
    FIXED_TPM,
    RESTRICTED,
    SENSITIVE_DATA_ORIGIN,
    SIGN,
    PublicArea,
    parse_tpm2b_public,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    ActivationError,
    AttestationError,
    FormatError,
    InputError,
    KeyAttributesError,
    QuoteError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection

SRK_ATTRIBUTES = FIXED_TPM | FIXED_PARENT | RESTRICTED | DECRYPT | SENSITIVE_DATA_ORIGIN
AK_ATTRIBUTES = FIXED_TPM | FIXED_PARENT | RESTRICTED | SIGN | SENSITIVE_DATA_ORIGIN
ALG_SHA256 = 0x000B
NONCE_SIZE = 32
SECRET_SIZE = 32
TARGETS = ("srk", "ak")
RECORD_LINK = "record unchanged since enrollment"


@dataclass(frozen=True)
class Link:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{self.name}: {'passed' if self.passed else 'FAILED'}: {self.detail}"


@dataclass(frozen=True)
class Evidence:
    """A node's public attestation evidence, parsed strictly (what Attestor.evidence returns)."""

    node: str
    ek_type: str
    ek_certificate: bytes | None
    ek: PublicArea
    srk: PublicArea
    ak: PublicArea


def parse_evidence(doc: dict, node: str) -> Evidence:
    """Parse the node's evidence; the names are recomputed here, never taken from the node."""
    what = f"attestation evidence of {node}"
    try:
        return Evidence(
            node=node,
            ek_type=str(doc["ek_type"]),
            ek_certificate=bytes(doc["ek_certificate"]) if doc.get("ek_certificate") else None,
            ek=parse_tpm2b_public(doc["ek_public"], f"{what}: EK public"),
            srk=parse_tpm2b_public(doc["srk_public"], f"{what}: SRK public"),
            ak=parse_tpm2b_public(doc["ak_public"], f"{what}: AK public"),
        )
    except KeyError as exc:
        raise FormatError(f"{what}: field {exc} missing") from None


@dataclass(frozen=True)
class Recorded:
    """The identity a node's signed record holds (its ``attestation``): what the challenge is made for."""

    ek_pin: str
    srk: PublicArea
    ak: PublicArea
    enrolled_at: str


def recorded_identity(record, node: str) -> Recorded | None:
    """The recorded identity of a verified NodeRecord; None for a record enrolled before attestation."""
    att = getattr(record, "attestation", None)
    if not att:
        return None
    what = f"{node}'s signed record"
    return Recorded(
        ek_pin=att["ek_public_sha256"],
        srk=parse_tpm2b_public(canonical.b64decode(att["srk_public"], f"{what}: SRK public"), f"{what}: SRK public"),
        ak=parse_tpm2b_public(canonical.b64decode(att["ak_public"], f"{what}: AK public"), f"{what}: AK public"),
        enrolled_at=record.enrolled_at,
    )


@dataclass(frozen=True)
class Trust:
    """How the controller trusts a node's EK (``ironclaw_ek_trust`` and its companions)."""

    mode: str = "ca"
    ca_dir: str | None = None
    pin: str | None = None

    def __post_init__(self):
        if self.mode not in ek_trust.TRUST_MODES:
            raise InputError(f"ironclaw_ek_trust must be one of {', '.join(ek_trust.TRUST_MODES)}, got {self.mode!r}")
        if self.mode == "ca" and not self.ca_dir:
            raise InputError("ironclaw_ek_trust=ca needs ironclaw_ek_ca_dir (the EK root and intermediate CAs, PEM)")


@dataclass
class Challenge:
    """Credentials for the SRK and the AK plus a quote nonce. ``request()`` is what the node gets; the secrets stay."""

    nonce: bytes
    selection: PcrSelection
    credentials: dict[str, tuple[bytes, bytes]]
    secrets: dict[str, bytes] = field(repr=False)

    def request(self) -> dict:
        return {
            "nonce": self.nonce,
            "pcrs": str(self.selection),
            "credentials": {
                target: {"id_object": blob, "encrypted_secret": seed}
                for target, (blob, seed) in self.credentials.items()
            },
        }


class Proof:
    """One run of the proof for one node; ``links`` lists what passed and the link that failed."""

    def __init__(self, evidence: Evidence, trust: Trust, now: datetime, recorded: Recorded | None = None):
        self.evidence = evidence
        self.trust = trust
        self.now = now
        self.recorded = recorded
        self.links: list[Link] = []
        self.chain: list[str] = []
        self.quote: QuoteInfo | None = None

    def _targets(self) -> tuple[tuple[str, PublicArea], ...]:
        """The SRK and AK the credentials are made for: the recorded ones when there is a record."""
        src = self.recorded or self.evidence
        return (("srk", src.srk), ("ak", src.ak))

    @property
    def node(self) -> str:
        return self.evidence.node

    def _check(self, name: str, check) -> None:
        try:
            detail = check()
        except AttestationError as err:
            self.links.append(Link(name, False, str(err).split(": FAILED: ", 1)[-1]))
            raise
        self.links.append(Link(name, True, detail))

    # -- links 1-3: from the evidence alone -----------------------------------
    def check_identity(self) -> None:
        ev, trust = self.evidence, self.trust
        pin = ek_trust.ek_pin(ev.ek)
        if trust.mode == "ca":

            def chain() -> str:
                self.chain = ek_trust.verify_chain(ev.ek_certificate, trust.ca_dir, self.now, self.node)
                return (
                    f"the {ev.ek_type} certificate chains to a root in {trust.ca_dir} ({len(self.chain)} certificates)"
                )

            def matches() -> str:
                ek_trust.check_certificate_key(ev.ek_certificate, ev.ek, self.node)
                return f"the certificate's key is the {ev.ek.describe()} EK the TPM created ({pin})"

            self._check("EK certificate chain", chain)
            self._check("EK public matches its certificate", matches)
        elif trust.mode == "pin":
            self._check(
                "EK pin",
                lambda: f"the EK public hashes to the pinned {ek_trust.check_pin(ev.ek, trust.pin, self.node)}",
            )
        else:
            self.links.append(Link("EK trust", True, f"tofu: the EK {pin} is recorded unchecked (trust on first use)"))
        self._check("SRK attributes", lambda: _attributes(ev.srk, SRK_ATTRIBUTES, "SRK", self.node, DECRYPT))
        self._check("AK attributes", lambda: _attributes(ev.ak, AK_ATTRIBUTES, "AK", self.node, SIGN))

    # -- links 4-5: the node answers a challenge ------------------------------
    def challenge(self, selection: PcrSelection) -> Challenge:
        """Credentials for the SRK and the AK (the recorded ones, with a record), wrapped to the EK; the EK the
        node presents serves only if it is the recorded one (same SHA-256): else RECORD_LINK fails here."""
        if self.recorded is not None:
            present = ek_trust.ek_pin(self.evidence.ek)
            if not hmac.compare_digest(present, self.recorded.ek_pin):
                rec = self.recorded
                detail = (
                    f"{self.node} was enrolled ({rec.enrolled_at}) with the EK {rec.ek_pin} and the SRK named "
                    f"{rec.srk.name.hex()}, but its TPM now holds the SRK named {self.evidence.srk.name.hex()} "
                    f"and the EK {present}: the TPM was replaced, so the node cannot unseal what was sealed "
                    "for it; re-enroll it (enroll with replace) and recover its VMs from backup or another node"
                )
                self.links.append(Link(RECORD_LINK, False, detail))
                raise AttestationError(detail, link=RECORD_LINK)
        creds, secret_values = {}, {}
        for target, area in self._targets():
            secret_values[target] = secrets.token_bytes(SECRET_SIZE)
            creds[target] = make_credential(self.evidence.ek, secret_values[target], area.name)
        return Challenge(secrets.token_bytes(NONCE_SIZE), selection, creds, secret_values)

    def check_answers(self, challenge: Challenge, answers: dict) -> None:
        """``answers`` as answer_challenge() returns them: per target a secret or the TPM's refusal, and a quote."""
        for target, area in self._targets():
            label = target.upper()
            self._check(
                f"{label} activation", lambda t=target, a=area, lb=label: self._activation(challenge, answers, t, a, lb)
            )
        quote = answers.get("quote") or {}

        def quoted() -> str:
            if not quote or "attest" not in quote:
                why = quote.get("error") or "no answer"
                raise QuoteError(f"{self.node} returned no quote ({why})")
            self.quote = verify_quote(
                dict(self._targets())["ak"],
                quote["attest"],
                quote["signature"],
                challenge.nonce,
                challenge.selection,
                quote["pcr_values"],
                self.node,
            )
            return f"the AK signed PCRs {challenge.selection} with this run's nonce; the PCR values match its digest"

        self._check("quote", quoted)

    def _activation(self, challenge: Challenge, answers: dict, target: str, area: PublicArea, label: str) -> str:
        answer = (answers.get(target) or {}) if isinstance(answers.get(target), dict) else {}
        got = answer.get("secret")
        link = f"{label} activation"
        if got is None:
            why = answer.get("error") or "no answer"
            raise ActivationError(
                f"the TPM of {self.node} did not activate the credential made for its EK and the {label} named "
                f"{area.name.hex()[:20]}… ({why}): that {label} is not resident in the TPM holding this EK "
                "(a software key, or a key from another TPM)",
                link=link,
            )
        if not hmac.compare_digest(bytes(got), challenge.secrets[target]):
            raise ActivationError(f"{self.node} returned another secret than the credential held", link=link)
        return f"the TPM holding the EK released the secret bound to the {label} named {area.name.hex()[:20]}…"

    # -- result --------------------------------------------------------------
    def record(self) -> dict:
        """The evidence a signed node record carries (DESIGN §8); no secret."""
        ev = self.evidence
        return {
            "trust": self.trust.mode,
            "ek_type": ev.ek_type,
            "ek_public_sha256": ek_trust.ek_pin(ev.ek),
            "ek_chain": list(self.chain),
            "srk_name": ev.srk.name.hex(),
            "srk_public": canonical.b64encode(_tpm2b(ev.srk.raw)),
            "ak_public": canonical.b64encode(_tpm2b(ev.ak.raw)),
            "ak_name": ev.ak.name.hex(),
            "attested_at": canonical.utc_timestamp(self.now),
        }


def _tpm2b(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def _attributes(area: PublicArea, required: int, label: str, node: str, role: int) -> str:
    missing = area.missing_attributes(required)
    if missing:
        raise KeyAttributesError(
            f"{node}'s {label} lacks {', '.join(missing)}: a key without them can leave the TPM or be "
            "imported from outside it, so it proves nothing about the TPM",
            link=f"{label} attributes",
        )
    if label == "AK" and (area.type != ALG_ECC or area.scheme_hash != ALG_SHA256):
        raise KeyAttributesError(f"{node}'s AK is not an ECDSA-SHA256 key", link="AK attributes")
    kind = "storage (decrypt)" if role == DECRYPT else "signing"
    return f"{area.describe()} restricted {kind} key with fixedTPM, fixedParent, sensitiveDataOrigin"
