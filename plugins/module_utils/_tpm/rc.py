# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""TPM and TSS response codes, decoded to their names (TPM_RC_..., TSS2_..._RC_...), meaning and fix.

tpm2-pytss's message says what a code means (Tss2_RC_Decode) but not its name, which is what the TPM
specification, tpm2-tools and search engines use. The tables hold the names of TPM 2.0 Part 2 (6.6) and of
tss2_common.h; the decoding is pure (no tpm2-pytss needed), so it works the same on pytss 1.2 and 2.3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LAYER_SHIFT = 16
_LAYERS = {
    0: "TPM",
    6: "FEATURE",
    7: "ESAPI",
    8: "SYS",
    9: "MU",
    10: "TCTI",
    11: "RESMGR",
    12: "RESMGR_TPM",
    13: "POLICY",
}
_TSS_PREFIX = {6: "TSS2_FAPI_RC_", 7: "TSS2_ESYS_RC_", 8: "TSS2_SYS_RC_", 9: "TSS2_MU_RC_", 10: "TSS2_TCTI_RC_"}
_TSS_PREFIX.update({11: "TSS2_RESMGR_RC_", 12: "TSS2_RESMGR_TPM_RC_", 13: "TSS2_POLICY_RC_"})

_PYTSS_PREFIX = re.compile(r"^[a-z_]+:(?:[a-z]+\([^)]*\):)?")
RC_VER1 = 0x100
RC_FMT1 = 0x080
RC_WARN = 0x900

# Format-one errors: a handle, session or parameter number is encoded beside them.
_FMT1 = {
    0x001: "ASYMMETRIC",
    0x002: "ATTRIBUTES",
    0x003: "HASH",
    0x004: "VALUE",
    0x005: "HIERARCHY",
    0x007: "KEY_SIZE",
    0x008: "MGF",
    0x009: "MODE",
    0x00A: "TYPE",
    0x00B: "HANDLE",
    0x00C: "KDF",
    0x00D: "RANGE",
    0x00E: "AUTH_FAIL",
    0x00F: "NONCE",
    0x010: "PP",
    0x012: "SCHEME",
    0x015: "SIZE",
    0x016: "SYMMETRIC",
    0x017: "TAG",
    0x018: "SELECTOR",
    0x01A: "INSUFFICIENT",
    0x01B: "SIGNATURE",
    0x01C: "KEY",
    0x01D: "POLICY_FAIL",
    0x01F: "INTEGRITY",
    0x020: "TICKET",
    0x021: "RESERVED_BITS",
    0x022: "BAD_AUTH",
    0x023: "EXPIRED",
    0x024: "POLICY_CC",
    0x025: "BINDING",
    0x026: "CURVE",
    0x027: "ECC_POINT",
}
_VER1 = {
    0x000: "INITIALIZE",
    0x001: "FAILURE",
    0x003: "SEQUENCE",
    0x00B: "PRIVATE",
    0x019: "HMAC",
    0x020: "DISABLED",
    0x021: "EXCLUSIVE",
    0x024: "AUTH_TYPE",
    0x025: "AUTH_MISSING",
    0x026: "POLICY",
    0x027: "PCR",
    0x028: "PCR_CHANGED",
    0x02D: "UPGRADE",
    0x02E: "TOO_MANY_CONTEXTS",
    0x02F: "AUTH_UNAVAILABLE",
    0x030: "REBOOT",
    0x031: "UNBALANCED",
    0x042: "COMMAND_SIZE",
    0x043: "COMMAND_CODE",
    0x044: "AUTHSIZE",
    0x045: "AUTH_CONTEXT",
    0x046: "NV_RANGE",
    0x047: "NV_SIZE",
    0x048: "NV_LOCKED",
    0x049: "NV_AUTHORIZATION",
    0x04A: "NV_UNINITIALIZED",
    0x04B: "NV_SPACE",
    0x04C: "NV_DEFINED",
    0x050: "BAD_CONTEXT",
    0x051: "CPHASH",
    0x052: "PARENT",
    0x053: "NEEDS_TEST",
    0x054: "NO_RESULT",
    0x055: "SENSITIVE",
}
_WARN = {
    0x001: "CONTEXT_GAP",
    0x002: "OBJECT_MEMORY",
    0x003: "SESSION_MEMORY",
    0x004: "MEMORY",
    0x005: "SESSION_HANDLES",
    0x006: "OBJECT_HANDLES",
    0x007: "LOCALITY",
    0x008: "YIELDED",
    0x009: "CANCELED",
    0x00A: "TESTING",
    **{0x010 + n: f"REFERENCE_H{n}" for n in range(7)},
    **{0x018 + n: f"REFERENCE_S{n}" for n in range(7)},
    0x020: "NV_RATE",
    0x021: "LOCKOUT",
    0x022: "RETRY",
    0x023: "NV_UNAVAILABLE",
}
# TSS2_BASE_RC_* of tss2_common.h: the same numbers in every TSS layer.
_TSS_BASE = {
    1: "GENERAL_FAILURE",
    2: "NOT_IMPLEMENTED",
    3: "BAD_CONTEXT",
    4: "ABI_MISMATCH",
    5: "BAD_REFERENCE",
    6: "INSUFFICIENT_BUFFER",
    7: "BAD_SEQUENCE",
    8: "NO_CONNECTION",
    9: "TRY_AGAIN",
    10: "IO_ERROR",
    11: "BAD_VALUE",
    12: "NOT_PERMITTED",
    13: "INVALID_SESSIONS",
    14: "NO_DECRYPT_PARAM",
    15: "NO_ENCRYPT_PARAM",
    16: "BAD_SIZE",
    17: "MALFORMED_RESPONSE",
    18: "INSUFFICIENT_CONTEXT",
    19: "INSUFFICIENT_RESPONSE",
    20: "INCOMPATIBLE_TCTI",
    21: "NOT_SUPPORTED",
    22: "BAD_TCTI_STRUCTURE",
    23: "MEMORY",
    24: "BAD_TR",
    25: "MULTIPLE_DECRYPT_SESSIONS",
    26: "MULTIPLE_ENCRYPT_SESSIONS",
    27: "RSP_AUTH_FAILED",
}

_TCTI_FIX = (
    "the connection to the TPM broke or was refused: check that the TPM (or swtpm) at {tcti} is running and "
    "reachable, then re-run (nothing is half-written: every file is replaced atomically)"
)
# What to do, by name: for the codes an operator can act on.
_FIXES = {
    "TPM_RC_LOCKOUT": (
        "the TPM is in dictionary-attack lockout. ironclaw's keyslots and SRK are noDA objects, so unseal, "
        "seal and migration keep working; commands that use a DA-protected authorization wait until the "
        "lockout recovery time passes (the doctor playbook shows the counter and the wait), or clear it "
        "with the lockout authorization: tpm2_dictionarylockout --clear-lockout"
    ),
    "TPM_RC_AUTH_FAIL": "a wrong authorization value: ironclaw expects the owner and endorsement passwords empty",
    "TPM_RC_BAD_AUTH": "a wrong authorization value: ironclaw expects the owner and endorsement passwords empty",
    "TPM_RC_POLICY_FAIL": "a policy check failed: the approval or grant does not fit this object (sign a new one)",
    "TPM_RC_INTEGRITY": "the object or duplicate was altered or belongs to another parent key: restore it",
    "TPM_RC_NV_SPACE": "the TPM's NV memory is full: remove unused NV indices (tpm2_getcap handles-nv-index)",
    "TPM_RC_NV_RATE": "the TPM throttles NV writes to protect its flash: wait a few seconds and re-run",
    "TPM_RC_NV_UNAVAILABLE": "the TPM's NV memory is busy: re-run",
    "TPM_RC_OBJECT_MEMORY": "the TPM has no free object slot: flush transient objects (tpm2_flushcontext -t)",
    "TPM_RC_SESSION_MEMORY": "the TPM has no free session slot: flush sessions (tpm2_flushcontext -s)",
    "TPM_RC_OBJECT_HANDLES": "the TPM has no free object handle: flush transient objects (tpm2_flushcontext -t)",
    "TPM_RC_SESSION_HANDLES": "the TPM has no free session handle: flush sessions (tpm2_flushcontext -s)",
    "TPM_RC_MEMORY": "the TPM is out of memory: flush transient objects and sessions (tpm2_flushcontext -t -s)",
    "TPM_RC_RETRY": "the TPM asked to retry the command: re-run",
    "TPM_RC_TESTING": "the TPM is still running its self-test: re-run in a moment",
    "TPM_RC_YIELDED": "the TPM paused the command: re-run",
    "TPM_RC_INITIALIZE": (
        "the TPM was not started (TPM2_Startup): reboot the node, or start swtpm with --flags startup-clear"
    ),
    "TPM_RC_FAILURE": "the TPM is in failure mode: reboot the node; if that does not help, ask the TPM's vendor",
    "TPM_RC_PCR_CHANGED": "PCR values changed during the command: re-run",
    "TPM_RC_HANDLE": (
        "the TPM has no object at that handle (was the TPM cleared?): run the doctor playbook, "
        "then provision the node again"
    ),
    "TPM_RC_DISABLED": "the TPM or the hierarchy is disabled: enable it in the firmware setup",
}


@dataclass(frozen=True)
class ResponseCode:
    rc: int
    name: str  # TPM_RC_LOCKOUT, TSS2_TCTI_RC_IO_ERROR, or TPM_RC_0x... for a code we have no name for
    layer: str  # TPM, ESAPI, TCTI...
    where: str  # "handle 1", "session 1", "parameter 2", or ""

    @property
    def connection_lost(self) -> bool:
        """The TPM could not be talked to (rather than refused): a TCTI or resource-manager failure, or ESAPI's
        BAD_SEQUENCE, which is what every call returns after the connection broke in the middle of a command."""
        return self.layer in ("TCTI", "RESMGR") or self.name == "TSS2_ESYS_RC_BAD_SEQUENCE"


def decode(rc: int) -> ResponseCode:
    """Split a TSS2_RC into its layer, name and the handle, session or parameter it points at."""
    rc = int(rc) & 0xFFFFFFFF
    layer_number = rc >> _LAYER_SHIFT
    layer = _LAYERS.get(layer_number, f"layer {layer_number}")
    code = rc & 0xFFFF
    if layer_number not in (0, 12):
        base = _TSS_BASE.get(code)
        prefix = _TSS_PREFIX.get(layer_number)
        if prefix is None:
            return ResponseCode(rc, f"TSS2_RC_0x{rc:08x}", layer, "")
        return ResponseCode(rc, prefix + (base or f"0x{code:04x}"), layer, "")
    # The TPM's own codes (layer 12 is the resource manager passing a TPM code through).
    if code & RC_FMT1:
        name = _FMT1.get(code & 0x3F)
        number = (code >> 8) & 0xF
        if code & 0x040:
            where = f"parameter {number}"
        elif number & 0x8:
            where = f"session {number & 0x7}"
        else:
            where = f"handle {number}" if number else ""
        base = RC_FMT1 + (code & 0x3F)
    elif code & 0xF00 == RC_WARN:
        name, where, base = _WARN.get(code & 0x7F), "", code
    elif code & RC_VER1:
        name, where, base = _VER1.get(code & 0x7F), "", code
    else:
        name, where, base = None, "", code
    return ResponseCode(rc, f"TPM_RC_{name}" if name else f"TPM_RC_0x{base:03x}", layer, where)


def _rc_of(exc: BaseException) -> int | None:
    try:
        return int(getattr(exc, "rc", None))
    except (TypeError, ValueError):
        return None


def connection_lost(exc: BaseException) -> bool:
    """True for a tss2 failure that means the TPM could not be talked to (it did not refuse anything)."""
    value = _rc_of(exc)
    return value is not None and decode(value).connection_lost


def describe(exc: BaseException, tcti: str | None = None) -> str:
    """One line for an error message: name, code, pytss' meaning, and the fix where one is known.

    ``exc`` is a tpm2-pytss TSS2_Exception (anything with an integer ``rc``); anything else is shown as is.
    """
    value = _rc_of(exc)
    if value is None:
        return str(exc)
    code = decode(value)
    # pytss writes "tpm:session(1):meaning" or "tcti:meaning"; the name and position say the first part better.
    meaning = _PYTSS_PREFIX.sub("", str(exc)).strip()
    where = f", {code.where}" if code.where else ""
    text = f"{code.name} (0x{code.rc:08x}{where}): {meaning}"
    fix = _TCTI_FIX if code.connection_lost else _FIXES.get(code.name)
    if fix:
        text += "; " + fix.format(tcti=f"tcti '{tcti}'" if tcti else "the configured tcti")
    return text
