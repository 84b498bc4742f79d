# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The endorsement key: its certificate in NV and the EK created from its template.

TCG EK Credential Profile for TPM Family 2.0: a certificate for each EK type at
a fixed NV index (low range 0x01c00002 RSA-2048, 0x01c0000a ECC P-256; high
range 0x01c00012-0x01c0001e), the EK itself re-created on demand from the
matching template (an optional template or nonce index next to the certificate
overrides the default). Which indices exist is read once (one GetCapability);
absent ones are never probed. The chain is verified on the controller only.
"""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import TpmError
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.context import pytss, tpm_errors

# (certificate index, tpm2_pytss EK type name), in the order an EK is preferred.
EK_TYPES = (
    (0x01C00002, "EK-RSA2048"),
    (0x01C0000A, "EK-ECC256"),
    (0x01C00012, "EK-HIGH-RSA2048"),
    (0x01C00014, "EK-HIGH-ECC256"),
    (0x01C00016, "EK-HIGH-ECC384"),
    (0x01C00018, "EK-HIGH-ECC521"),
    (0x01C0001C, "EK-HIGH-RSA3072"),
    (0x01C0001E, "EK-HIGH-RSA4096"),
)
EK_NV_FIRST = 0x01C00002
EK_NV_LAST = 0x01C0001F  # the last template index of the high range
LOW_RANGE_TYPES = ("EK-RSA2048", "EK-ECC256")
DEFAULT_EK_TYPE = "EK-RSA2048"  # used without any certificate (pin or tofu trust)
_NV_BUFFER_DEFAULT = 512  # if the TPM does not report TPM_PT_NV_BUFFER_MAX


@dataclass
class EkInfo:
    """The EK this node uses: its certificate (DER, None if the TPM holds none) and its public area."""

    ek_type: str
    cert_index: int | None
    certificate: bytes | None
    public: bytes  # marshaled TPM2B_PUBLIC as the TPM created it


def defined_ek_indices(ctx) -> set[int]:
    """NV indices in the EK certificate ranges that exist on this TPM (one GetCapability, two if it pages)."""
    t = pytss()
    found: set[int] = set()
    start = EK_NV_FIRST
    while True:
        with tpm_errors("listing the TPM's NV indices"):
            more, data = ctx.get_capability(capability=t.TPM2_CAP.HANDLES, prop=start, property_count=64)
        handles = [int(h) for h in data.data.handles]
        found.update(h for h in handles if EK_NV_FIRST <= h <= EK_NV_LAST)
        if not more or not handles or handles[-1] >= EK_NV_LAST:
            return found
        start = handles[-1] + 1


def nv_buffer_max(ctx) -> int:
    """How many bytes one NV_Read may return (TPM_PT_NV_BUFFER_MAX)."""
    t = pytss()
    with tpm_errors("reading the TPM's NV buffer size"):
        _more, data = ctx.get_capability(
            capability=t.TPM2_CAP.TPM_PROPERTIES, prop=t.TPM2_PT_NV.BUFFER_MAX, property_count=1
        )
    for prop in data.data.tpmProperties:
        if prop.property == t.TPM2_PT_NV.BUFFER_MAX and prop.value:
            return int(prop.value)
    return _NV_BUFFER_DEFAULT


def read_nv(ctx, index: int, chunk: int) -> bytes:
    """The whole content of an NV index readable with its own (empty) auth value."""
    with tpm_errors(f"reading NV index 0x{index:08x}"):
        handle = ctx.tr_from_tpmpublic(handle=index)
        try:
            pub, _name = ctx.nv_read_public(nv_index=handle)
            size = pub.nvPublic.dataSize
            data = b""
            while len(data) < size:
                data += bytes(ctx.nv_read(nv_index=handle, size=min(chunk, size - len(data)), offset=len(data)))
        finally:
            ctx.tr_close(handle)
    return data


def choose_ek_type(defined: set[int], wanted: str | None = None) -> tuple[int | None, str]:
    """The certificate index and EK type to use: ``wanted`` if given, else the first with a certificate."""
    for index, ek_type in EK_TYPES:
        if wanted and ek_type != wanted:
            continue
        if index in defined:
            return index, ek_type
        if wanted:
            if ek_type in LOW_RANGE_TYPES:
                return None, ek_type
            raise TpmError(f"the TPM holds no {wanted} certificate at NV 0x{index:08x}")
    if wanted:
        raise TpmError(f"unknown EK type {wanted!r}; known: {', '.join(name for _i, name in EK_TYPES)}")
    return None, DEFAULT_EK_TYPE


def create_ek(ctx, ek_type: str | None = None, with_certificate: bool = True):
    """Create the EK from its template; returns (ESYS handle, EkInfo). The caller flushes the handle.

    TPM commands: GetCapability (indices); with_certificate: GetCapability (NV buffer size), NV_ReadPublic ×2
    and NV_Read per chunk of the certificate (and of a template or nonce index if the TPM has one); CreatePrimary.
    Without the certificate (a later run that only uses the EK) nothing but optional template indices is read.
    """
    t = pytss()
    from tpm2_pytss.utils import NoSuchIndex, create_ek_template  # noqa: PLC0415 - node side only

    defined = defined_ek_indices(ctx)
    cert_index, ek_type = choose_ek_type(defined, ek_type)
    reads: dict[int, bytes] = {}
    chunk: list[int] = []

    def nv_read_cb(index) -> bytes:
        index = int(index)
        if index not in defined:
            raise NoSuchIndex(index)
        if index == cert_index and not with_certificate:
            return b""
        if index not in reads:
            if not chunk:
                chunk.append(nv_buffer_max(ctx))
            reads[index] = read_nv(ctx, index, chunk[0])
        return reads[index]

    try:
        certificate, template = create_ek_template(ek_type, nv_read_cb)
    except ValueError as exc:
        raise TpmError(f"no EK template for {ek_type}: {exc}") from exc
    hint = "is the endorsement hierarchy password set? ironclaw expects it empty"
    with tpm_errors(f"creating the {ek_type} endorsement key", hint):
        handle, public, *_created = ctx.create_primary(
            in_sensitive=None, in_public=template, primary_handle=t.ESYS_TR.ENDORSEMENT
        )
    info = EkInfo(
        ek_type=ek_type,
        cert_index=cert_index,
        certificate=bytes(certificate) if certificate else None,
        public=bytes(public.marshal()),
    )
    return handle, info
