# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Quote verification on the controller: TPMS_ATTEST and TPMT_SIGNATURE (TPM 2.0 Part 2 §10.12, §11.3).

A quote counts only if the AK from the node's record signed it, it is a
TPM-generated quote (a restricted AK signs nothing else with that magic), its
qualifying data is the nonce this controller just drew, it covers exactly the
requested PCR selection, and the PCR values offered hash to its digest.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.tpm_public import (
    ALG_ECC,
    HASHES,
    PublicArea,
    _Reader,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError, QuoteError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import (
    InvalidSignature,
    ec,
    encode_dss_signature,
    hashes,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import BANKS, PcrSelection

TPM_GENERATED = 0xFF544347
ST_ATTEST_QUOTE = 0x8018
ALG_ECDSA = 0x0018
_BANK_BY_ALG = {alg: bank for bank, (alg, _size) in BANKS.items()}


@dataclass(frozen=True)
class QuoteInfo:
    """What a verified quote says."""

    nonce: bytes
    selection: str
    pcr_digest: bytes
    clock: int
    reset_count: int
    restart_count: int


def _parse_attest(attest: bytes, what: str) -> tuple[int, int, bytes, QuoteInfo, dict[str, tuple[int, ...]]]:
    r = _Reader(attest, what)
    magic, typ = r.u32(), r.u16()
    r.tpm2b()  # qualifiedSigner
    extra = r.tpm2b()
    clock, reset_count, restart_count, _safe = struct.unpack(">QIIB", r.take(17))
    r.take(8)  # firmwareVersion
    if typ != ST_ATTEST_QUOTE:
        return magic, typ, extra, None, {}
    banks: dict[str, tuple[int, ...]] = {}
    for _index in range(r.u32()):
        alg, size = r.u16(), r.take(1)[0]
        bitmap = r.take(size)
        bank = _BANK_BY_ALG.get(alg, f"0x{alg:04x}")
        banks[bank] = tuple(i for i in range(size * 8) if bitmap[i // 8] >> (i % 8) & 1)
    digest = r.tpm2b()
    r.end()
    info = QuoteInfo(extra, "", digest, clock, reset_count, restart_count)
    return magic, typ, extra, info, banks


def _verify_signature(ak: PublicArea, attest: bytes, signature: bytes, node: str) -> None:
    r = _Reader(signature, f"{node}'s quote signature")
    sig_alg, hash_alg = r.u16(), r.u16()
    if ak.type != ALG_ECC or sig_alg != ALG_ECDSA or hash_alg != ak.scheme_hash or hash_alg not in HASHES:
        raise QuoteError(
            f"{node}'s quote is signed with algorithm 0x{sig_alg:04x}/0x{hash_alg:04x}, not the AK's ECDSA scheme"
        )
    sig_r, sig_s = r.tpm2b(), r.tpm2b()
    r.end()
    der = encode_dss_signature(int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big"))
    try:
        ak.key().verify(der, attest, ec.ECDSA(getattr(hashes, HASHES[hash_alg].upper())()))
    except InvalidSignature:
        raise QuoteError(
            f"{node}'s quote is not signed by the AK its record holds ({ak.name.hex()[:20]}…): another TPM answered, "
            "or the quote was altered"
        ) from None


def verify_quote(
    ak: PublicArea,
    attest: bytes,
    signature: bytes,
    nonce: bytes,
    selection: PcrSelection,
    pcr_values: dict[str, bytes],
    node: str,
) -> QuoteInfo:
    """Check a quote link by link; QuoteError names the first that breaks."""
    attest, signature = bytes(attest), bytes(signature)
    try:
        _verify_signature(ak, attest, signature, node)
        magic, typ, extra, info, banks = _parse_attest(attest, f"{node}'s quote")
    except FormatError as exc:
        raise QuoteError(f"{node}'s quote does not parse: {exc}") from None
    if magic != TPM_GENERATED or typ != ST_ATTEST_QUOTE:
        raise QuoteError(f"{node}'s AK signed a structure of type 0x{typ:04x}, not a TPM-generated quote")
    if not hmac.compare_digest(extra, bytes(nonce)):
        raise QuoteError(
            f"{node}'s quote carries another nonce than the one this controller drew for it (a stale or replayed "
            "quote); ask again"
        )
    if banks != dict(selection.banks):
        quoted = "+".join(f"{b}:{','.join(map(str, i))}" for b, i in banks.items())
        raise QuoteError(f"{node}'s quote covers PCRs {quoted}, not the requested {selection}")
    try:
        expected = selection.digest(pcr_values)
    except InputError as exc:
        raise QuoteError(f"the PCR values given for {node} do not cover {selection}: {exc}") from None
    if set(pcr_values) != {f"{b}:{i}" for b, i in selection.slots()}:
        raise QuoteError(f"the PCR values given for {node} are not exactly {selection}")
    if not hmac.compare_digest(expected, info.pcr_digest):
        raise QuoteError(
            f"the PCR values given for {node} do not hash to the digest its TPM quoted: they are not the values the "
            "TPM holds (altered, or the PCRs changed between quote and read; quote again)"
        )
    return QuoteInfo(
        nonce=extra,
        selection=str(selection),
        pcr_digest=info.pcr_digest,
        clock=info.clock,
        reset_count=info.reset_count,
        restart_count=info.restart_count,
    )
