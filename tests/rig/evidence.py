"""Well-formed attestation evidence for node records built by hand in unit tests (no TPM).

A tpm2 node record carries the evidence of its attestation proof (DESIGN §8); tests that are about something else
than attestation give their hand-made records this one. The values are shaped like a proof's, not from a TPM.
"""

from __future__ import annotations

AK_NAME = "000b" + "a1" * 32
AK_PUBLIC = "AAEAAQ=="


def attestation(srk_name: str, srk_public: str, trust: str = "ca", at: str = "2030-05-01T00:00:00Z") -> dict:
    """What Proof.record() returns for an SRK, with the given trust mode."""
    return {
        "trust": trust,
        "ek_type": "EK-RSA2048",
        "ek_public_sha256": "sha256:" + "e0" * 32,
        "ek_chain": ["sha256:" + "c1" * 32, "sha256:" + "c2" * 32] if trust == "ca" else [],
        "srk_name": srk_name,
        "srk_public": srk_public,
        "ak_name": AK_NAME,
        "ak_public": AK_PUBLIC,
        "attested_at": at,
    }
