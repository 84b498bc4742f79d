# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Calls whose tpm2-pytss signature or behaviour differs between Debian 12's 1.2 and current releases."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.context import pytss


def policy_authorize(ctx, session, approved_policy: bytes, policy_ref: bytes, key_name: bytes, ticket) -> None:
    # Positional order changed in 3.x; keyword names are the same in both.
    ctx.policy_authorize(
        policy_session=session,
        approved_policy=approved_policy,
        policy_ref=policy_ref,
        key_sign=key_name,
        check_ticket=ticket,
    )


def policy_secret(ctx, auth_handle, session) -> None:
    """PolicySecret with the object's (empty) password, no expiration.

    tpm2-pytss 1.2 checks auth_handle against the ESYS_TR enum and so rejects
    every loaded object; for that version we make the same ESAPI call directly.
    """
    t = pytss()
    try:
        ctx.policy_secret(auth_handle, session, b"", b"", b"", 0)
        return
    except ValueError as exc:
        if "auth_handle" not in str(exc):
            raise
    from tpm2_pytss._libtpm2_pytss import ffi, lib  # noqa: PLC0415 - 1.2 only

    timeout = ffi.new("TPM2B_TIMEOUT **")
    ticket = ffi.new("TPMT_TK_AUTH **")
    rc = lib.Esys_PolicySecret(
        ctx._ctx,
        auth_handle,
        session,
        t.ESYS_TR.PASSWORD,
        t.ESYS_TR.NONE,
        t.ESYS_TR.NONE,
        ffi.new("TPM2B_NONCE *"),
        ffi.new("TPM2B_DIGEST *"),
        ffi.new("TPM2B_NONCE *"),
        0,
        timeout,
        ticket,
    )
    if timeout[0] != ffi.NULL:
        lib.Esys_Free(timeout[0])
    if ticket[0] != ffi.NULL:
        lib.Esys_Free(ticket[0])
    if rc:
        raise t.TSS2_Exception(rc)
