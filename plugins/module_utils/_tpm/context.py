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
# The TCTIs this process has open: an error that says the connection broke names them (tpm_errors is called
# from many places that do not carry the tcti). A module talks to one TPM; tests may hold two.
_open: list[str] = []


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
    try:
        ctx = t.ESAPI(tcti)
    except Exception as exc:  # tss2 raises TSS2_Exception, or OSError/RuntimeError from the TCTI loader
        raise TpmError(
            f"cannot reach the TPM at tcti '{tcti}': {describe(exc, tcti)}. "
            "Check that the TPM (or swtpm) is running and that the tcti option (or IRONCLAW_TCTI) names it, "
            "e.g. 'device:/dev/tpmrm0' or 'swtpm:host=127.0.0.1,port=2321'"
        ) from exc
    _open.append(tcti)
    return ctx


def closed(tcti: str) -> None:
    """A TPM context opened with open_esapi was closed."""
    if tcti in _open:
        _open.remove(tcti)


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


def refusal(exc: BaseException, tcti: str | None = None) -> str:
    """How a tss2 failure reads in our messages: the TPM refused, or the connection to it broke."""
    names = [tcti] if tcti else list(dict.fromkeys(_open))
    text = describe(exc, "' or '".join(names) if names else None)
    if connection_lost(exc):
        return f"the TPM could not be reached ({text})"
    return f"the TPM refused ({text})"
