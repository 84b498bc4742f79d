# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Opening a TPM through tpm2-pytss and turning tss2 failures into TpmError."""

from __future__ import annotations

import contextlib
import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import BackendError, TpmError
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.rc import connection_lost, describe

DEFAULT_TCTI = "device:/dev/tpmrm0"
TCTI_ENV = "IRONCLAW_TCTI"
# The TCTI this process opened last: a module talks to one TPM, and an error that says the connection broke
# names it (tpm_errors is called from many places that do not carry the tcti).
_opened = {"tcti": None}


def resolve_tcti(tcti: str | None) -> str:
    return tcti or os.environ.get(TCTI_ENV) or DEFAULT_TCTI


def pytss():
    """Import tpm2_pytss quietly: tss2 logs refusals on stderr by itself, we report our own."""
    os.environ["TSS2_LOG"] = "all+NONE"
    try:
        import tpm2_pytss  # noqa: PLC0415 - optional dependency, only for the tpm2 backend
    except ImportError as exc:
        raise BackendError(
            "the tpm2 backend needs tpm2-pytss on the node (Debian: apt-get install python3-tpm2-pytss); "
            f"import failed: {exc}"
        ) from exc
    return tpm2_pytss


def open_esapi(tcti: str):
    t = pytss()
    _opened["tcti"] = tcti
    try:
        return t.ESAPI(tcti)
    except Exception as exc:  # tss2 raises TSS2_Exception, or OSError/RuntimeError from the TCTI loader
        raise TpmError(
            f"cannot reach the TPM at tcti '{tcti}': {describe(exc, tcti)}. "
            "Check that the TPM (or swtpm) is running and that the tcti option (or IRONCLAW_TCTI) names it, "
            "e.g. 'device:/dev/tpmrm0' or 'swtpm:host=127.0.0.1,port=2321'"
        ) from exc


@contextlib.contextmanager
def tpm_errors(what: str, hint: str = ""):
    """Run TPM calls, re-raising tss2 failures as TpmError("<what>: <tpm says> <hint>")."""
    t = pytss()
    try:
        yield
    except t.TSS2_Exception as exc:
        # The hint explains a refusal; when the TPM could not be reached it would mislead.
        hint = "" if connection_lost(exc) else hint
        raise TpmError(f"{what}: {refusal(exc)}{'. ' + hint if hint else ''}") from exc


def refusal(exc: BaseException) -> str:
    """How a tss2 failure reads in our messages: the TPM refused, or the connection to it broke."""
    text = describe(exc, _opened["tcti"])
    if connection_lost(exc):
        return f"the TPM could not be reached ({text})"
    return f"the TPM refused ({text})"
