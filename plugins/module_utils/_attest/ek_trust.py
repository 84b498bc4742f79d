# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Why the controller believes an EK is a genuine TPM's (DESIGN §8, ``ironclaw_ek_trust``).

``ca``: the EK certificate chains to a root in ``ironclaw_ek_ca_dir`` (PEM roots
and intermediates) under cryptography's X.509 path verifier, with a permissive
end-entity policy (EK certificates carry no server or client EKU, often a
critical SAN naming the TPM and an empty subject), and the certificate's key is
the EK the TPM created. ``pin``: SHA-256 of the EK public equals the node's
``ironclaw_ek_pin``. ``tofu``: nothing is checked; the record says so.

Runs on the controller only: Debian 12's cryptography 38 has no path verifier.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from datetime import datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.tpm_public import PublicArea
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    EkChainError,
    EkMismatchError,
    EkPinError,
    InputError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import (
    InvalidSignature,
    serialization,
    x509,
    x509_verification,
)

TRUST_MODES = ("ca", "pin", "tofu")
_PIN_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


def ek_pin(ek_public: PublicArea) -> str:
    """``sha256:<hex>`` of the EK's TPMT_PUBLIC (what ``ironclaw_ek_pin`` holds)."""
    return "sha256:" + hashlib.sha256(ek_public.raw).hexdigest()


def certificate_fingerprint(cert) -> str:
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def check_pin(ek_public: PublicArea, pin: str | None, node: str) -> str:
    """The pin, if the EK hashes to it; EkPinError printing the value to pin otherwise."""
    actual = ek_pin(ek_public)
    how = (
        f"if this is the TPM you installed in {node}, set the host variable ironclaw_ek_pin: '{actual}' "
        "(inventory host_vars) and enroll again"
    )
    if not pin:
        raise EkPinError(f"{node} has ironclaw_ek_trust=pin but no ironclaw_ek_pin; its EK public is {actual}; {how}")
    if not _PIN_RE.match(str(pin).strip().lower()):
        raise InputError(f"ironclaw_ek_pin of {node} must be 'sha256:' and 64 hex digits, got {pin!r}")
    if not hmac.compare_digest(str(pin).strip().lower(), actual):
        raise EkPinError(
            f"{node}'s EK public is {actual}, but ironclaw_ek_pin is {str(pin).strip().lower()} (another TPM, or the "
            f"TPM was replaced); {how}"
        )
    return actual


def load_ca_dir(ca_dir: str) -> list:
    """Every certificate in the PEM files of ca_dir (roots and intermediates alike)."""
    if not os.path.isdir(ca_dir):
        raise EkChainError(
            f"the EK CA directory {ca_dir} does not exist: put the TPM vendor's root and intermediate certificates "
            "(PEM) there (ironclaw_ek_ca_dir), or use ironclaw_ek_trust=pin"
        )
    certs = []
    for entry in sorted(os.listdir(ca_dir)):
        path = os.path.join(ca_dir, entry)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        if _PEM_BEGIN not in data:
            continue
        try:
            certs.extend(x509.load_pem_x509_certificates(data))
        except ValueError as exc:
            raise EkChainError(f"{path} in the EK CA directory does not parse as PEM certificates: {exc}") from exc
    if not certs:
        raise EkChainError(f"the EK CA directory {ca_dir} holds no PEM certificate")
    return certs


def _is_self_signed(cert) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_chain(cert_der: bytes | None, ca_dir: str, now: datetime, node: str) -> list[str]:
    """SHA-256 fingerprints of the verified chain, EK certificate first; EkChainError naming what broke."""
    if x509_verification is None:
        raise EkChainError(
            "this Python's cryptography has no X.509 path verifier with extension policies (45 or later needed); "
            "EK certificate chains are verified on the controller, never on nodes"
        )
    if not cert_der:
        raise EkChainError(
            f"{node}'s TPM holds no EK certificate in NV (0x01c00002, 0x01c0000a, 0x01c00012-0x01c0001e). Some "
            "firmware TPMs publish it at a vendor URL instead (see docs/attestation.md), or pin the EK: "
            "ironclaw_ek_trust=pin"
        )
    try:
        cert = x509.load_der_x509_certificate(bytes(cert_der))
    except ValueError as exc:
        raise EkChainError(f"{node}'s EK certificate does not parse as DER X.509: {exc}") from exc
    pool = load_ca_dir(ca_dir)
    roots = [c for c in pool if _is_self_signed(c)]
    intermediates = [c for c in pool if not _is_self_signed(c)]
    if not roots:
        raise EkChainError(f"the EK CA directory {ca_dir} holds intermediates but no self-signed root")
    v = x509_verification
    builder = (
        v.PolicyBuilder()
        .store(v.Store(roots))
        .time(now)
        .extension_policies(ca_policy=v.ExtensionPolicy.webpki_defaults_ca(), ee_policy=v.ExtensionPolicy.permit_all())
    )
    try:
        verified = builder.build_client_verifier().verify(cert, intermediates)
    except v.VerificationError as exc:
        raise EkChainError(
            f"{node}'s EK certificate (issuer {cert.issuer.rfc4514_string() or 'empty'}, serial "
            f"{cert.serial_number}) does not chain to a root in {ca_dir}: {exc}. Add the TPM vendor's CA "
            "certificates there if this TPM is genuine"
        ) from exc
    return [certificate_fingerprint(c) for c in verified.chain]


def check_certificate_key(cert_der: bytes, ek_public: PublicArea, node: str) -> None:
    """The certificate certifies exactly the EK the TPM created (same public key)."""
    cert = x509.load_der_x509_certificate(bytes(cert_der))
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != ek_public.key().public_bytes(der, spki):
        raise EkMismatchError(
            f"{node}'s EK certificate certifies another key than the {ek_public.describe()} EK its TPM created "
            f"({ek_pin(ek_public)}): the certificate belongs to another TPM, or the EK does not come from the TPM"
        )
