# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PCR selections: the "sha256:0,7" text form and the TPML_PCR_SELECTION wire form."""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError

# TPM_ALG_ID and digest sizes of the banks we accept.
BANKS = {"sha1": (0x0004, 20), "sha256": (0x000B, 32), "sha384": (0x000C, 48)}
PCR_COUNT = 24
# [0-9], not \d (which also matches other scripts' digits), and fullmatch, not $ (which allows a final newline).
_BANK_RE = re.compile(r"(sha1|sha256|sha384):([0-9]{1,2}(?:,[0-9]{1,2})*)")


@dataclass(frozen=True)
class PcrSelection:
    """One or more banks, each with a sorted set of PCR indices."""

    banks: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def parse(cls, text: str) -> PcrSelection:
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"PCR selection must be a string like 'sha256:0,7', got {text!r}")
        banks: dict[str, tuple[int, ...]] = {}
        for part in text.replace(" ", "").split("+"):
            m = _BANK_RE.fullmatch(part)
            if not m:
                raise InputError(
                    f"PCR selection {text!r} is not of the form 'sha256:0,7' "
                    f"(banks {', '.join(BANKS)}; several banks joined with '+')"
                )
            bank, indices_text = m.groups()
            if bank in banks:
                raise InputError(f"PCR selection {text!r} names bank {bank} twice")
            indices = [int(i) for i in indices_text.split(",")]
            bad = [i for i in indices if i >= PCR_COUNT]
            if bad:
                raise InputError(f"PCR selection {text!r}: PCR {bad[0]} does not exist (0..{PCR_COUNT - 1})")
            if len(set(indices)) != len(indices):
                raise InputError(f"PCR selection {text!r} repeats a PCR index")
            banks[bank] = tuple(sorted(indices))
        ordered = tuple(sorted(banks.items(), key=lambda kv: BANKS[kv[0]][0]))
        return cls(ordered)

    def __str__(self) -> str:
        return "+".join(f"{bank}:{','.join(str(i) for i in idx)}" for bank, idx in self.banks)

    def marshal(self) -> bytes:
        """TPML_PCR_SELECTION as the TPM marshals it (sizeofSelect = 3)."""
        out = struct.pack(">I", len(self.banks))
        for bank, indices in self.banks:
            bitmap = bytearray(3)
            for i in indices:
                bitmap[i // 8] |= 1 << (i % 8)
            out += struct.pack(">HB", BANKS[bank][0], 3) + bytes(bitmap)
        return out

    def slots(self) -> list[tuple[str, int]]:
        """(bank, index) in the order the TPM concatenates values for PolicyPCR."""
        return [(bank, i) for bank, indices in self.banks for i in indices]

    def digest(self, values: dict[str, bytes]) -> bytes:
        """SHA-256 over the selected PCR values, keyed "bank:index"."""
        h = hashlib.sha256()
        for bank, i in self.slots():
            value = values.get(f"{bank}:{i}")
            if value is None or len(value) != BANKS[bank][1]:
                raise InputError(f"PCR value for {bank}:{i} is missing or has the wrong length")
            h.update(value)
        return h.digest()
