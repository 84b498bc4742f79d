# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node's half of attestation (DESIGN §8): evidence, credential activation and quotes.

The node proves nothing by itself: it hands out public evidence (EK certificate
and public, SRK and AK publics), answers the controller's credentials with
TPM2_ActivateCredential (activate = SRK or AK, key = EK under
PolicySecret(TPM_RH_ENDORSEMENT)) and signs quotes over PCRs with the AK. The
controller (module_utils/_attest) decides. Keyword arguments only: the
positional order of several ESAPI calls changed between tpm2-pytss 1.2 and 2.x.
"""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import BackendError, TpmError
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm import compat, ek
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.context import pytss, tpm_errors

AK_HANDLE = 0x81000002
ACTIVATION_TARGETS = ("srk", "ak")


def ak_public():
    """Attestation key template: ECC P-256, ECDSA-SHA256, restricted signing, never leaves the TPM."""
    t = pytss()
    attrs = (
        t.TPMA_OBJECT.USERWITHAUTH
        | t.TPMA_OBJECT.RESTRICTED
        | t.TPMA_OBJECT.SIGN_ENCRYPT
        | t.TPMA_OBJECT.FIXEDTPM
        | t.TPMA_OBJECT.FIXEDPARENT
        | t.TPMA_OBJECT.SENSITIVEDATAORIGIN
    )
    scheme = t.TPMT_ECC_SCHEME(
        scheme=t.TPM2_ALG.ECDSA, details=t.TPMU_ASYM_SCHEME(ecdsa=t.TPMS_SCHEME_HASH(hashAlg=t.TPM2_ALG.SHA256))
    )
    params = t.TPMU_PUBLIC_PARMS(
        eccDetail=t.TPMS_ECC_PARMS(
            symmetric=t.TPMT_SYM_DEF_OBJECT(algorithm=t.TPM2_ALG.NULL),
            scheme=scheme,
            curveID=t.TPM2_ECC.NIST_P256,
            kdf=t.TPMT_KDF_SCHEME(scheme=t.TPM2_ALG.NULL),
        )
    )
    area = t.TPMT_PUBLIC(type=t.TPM2_ALG.ECC, nameAlg=t.TPM2_ALG.SHA256, objectAttributes=attrs, parameters=params)
    return t.TPM2B_PUBLIC(publicArea=area)


@dataclass
class Quote:
    attest: bytes  # TPMS_ATTEST as the TPM signed it
    signature: bytes  # marshaled TPMT_SIGNATURE
    pcr_values: dict[str, bytes]  # "bank:index" -> value, read right after the quote


class Attestor:
    """Attestation calls on one TpmNode's context; ``close()`` flushes the EK it created."""

    def __init__(self, node, ek_type: str | None = None, with_certificate: bool = True):
        self.node = node
        self.ctx = node.ctx
        self.t = pytss()
        self._ek_type = ek_type
        self._with_certificate = with_certificate
        self._ek = None
        self._ek_info: ek.EkInfo | None = None
        self._ak = None
        self._ak_public = None  # (TPM2B_PUBLIC, name) read once by _check_ak

    def close(self) -> None:
        if self._ek is not None:
            try:
                self.ctx.flush_context(self._ek)
            except self.t.TSS2_Exception:
                pass
            self._ek = None
        if self._ak is not None:
            try:
                self.ctx.tr_close(self._ak)
            except self.t.TSS2_Exception:
                pass
            self._ak = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- keys ----------------------------------------------------------------
    def ek(self):
        if self._ek is None:
            self._ek, self._ek_info = ek.create_ek(self.ctx, self._ek_type, self._with_certificate)
        return self._ek

    @property
    def ek_info(self) -> ek.EkInfo:
        self.ek()
        return self._ek_info

    def _endorsement_session(self):
        """A policy session satisfying the EK's policy: PolicySecret(TPM_RH_ENDORSEMENT)."""
        t = self.t
        if self.ek_info.ek_type not in ek.LOW_RANGE_TYPES:
            # High-range EKs carry PolicyB = PolicyOR(PolicySecret(endorsement), PolicyAuthorizeNV), which
            # needs the PolicyC branch digest; not built yet.
            raise TpmError(
                f"the {self.ek_info.ek_type} EK's policy (TCG high range, PolicyOR) is not supported yet for "
                f"activation; use {' or '.join(ek.LOW_RANGE_TYPES)}"
            )
        with tpm_errors("starting the endorsement policy session"):
            session = self.ctx.start_auth_session(
                tpm_key=t.ESYS_TR.NONE,
                bind=t.ESYS_TR.NONE,
                session_type=t.TPM2_SE.POLICY,
                symmetric=t.TPMT_SYM_DEF(algorithm=t.TPM2_ALG.NULL),
                auth_hash=t.TPM2_ALG.SHA256,
            )
        try:
            with tpm_errors("PolicySecret on the endorsement hierarchy", "ironclaw expects its password empty"):
                compat.policy_secret(self.ctx, t.ESYS_TR.ENDORSEMENT, session)
        except BaseException:
            self.ctx.flush_context(session)
            raise
        return session

    def ak_present(self) -> bool:
        if self._ak is not None:
            return True
        handle = self.node._lookup(AK_HANDLE)
        if handle is not None:
            self.ctx.tr_close(handle)
        return handle is not None

    def ak(self, create: bool = True):
        """The persistent AK (created under the EK and persisted at 0x81000002 the first time)."""
        if self._ak is not None:
            return self._ak
        handle = self.node._lookup(AK_HANDLE)
        if handle is None:
            if not create:
                raise BackendError(f"no attestation key at 0x{AK_HANDLE:08x}: run ironclaw_node state=attested")
            handle = self._create_ak()
        self._check_ak(handle)
        self._ak = handle
        return handle

    def _create_ak(self):
        t = self.t
        parent = self.ek()
        session = self._endorsement_session()
        with tpm_errors("creating the attestation key under the EK"):
            private, public, *_created = self.ctx.create(
                parent_handle=parent, in_sensitive=None, in_public=ak_public(), session1=session
            )
        session = self._endorsement_session()
        with tpm_errors("loading the attestation key"):
            loaded = self.ctx.load(parent_handle=parent, in_private=private, in_public=public, session1=session)
        try:
            with tpm_errors(
                f"persisting the attestation key at 0x{AK_HANDLE:08x}",
                "is the owner hierarchy password set? ironclaw expects it empty",
            ):
                return self.ctx.evict_control(auth=t.ESYS_TR.OWNER, object_handle=loaded, persistent_handle=AK_HANDLE)
        finally:
            self.ctx.flush_context(loaded)

    def _check_ak(self, handle) -> None:
        with tpm_errors("reading the attestation key's public area"):
            pub, name, _qname = self.ctx.read_public(object_handle=handle)
        self._ak_public = (pub, bytes(name))
        want = ak_public().publicArea
        area = pub.publicArea
        if (
            area.type != want.type
            or area.objectAttributes != want.objectAttributes
            or area.parameters.eccDetail.curveID != want.parameters.eccDetail.curveID
        ):
            raise BackendError(
                f"the key persisted at 0x{AK_HANDLE:08x} on '{self.node.tcti}' is not an ironclaw attestation key; "
                "another tool owns that handle. Evict it deliberately (tpm2_evictcontrol) or use another TPM"
            )

    # -- evidence ------------------------------------------------------------
    def evidence(self) -> dict:
        """Public facts the controller checks: EK certificate and public, SRK and AK publics and names."""
        info = self.ek_info
        srk = self.node.srk()
        if self.node._srk_public is None:  # created in this context: not read yet
            with tpm_errors("reading the SRK public area"):
                pub, name, _q = self.ctx.read_public(object_handle=srk)
            self.node._srk_public = (pub, bytes(name))
        srk_pub, srk_name = self.node._srk_public  # read (and checked) by the lookup
        self.ak()
        ak_pub, ak_name = self._ak_public
        return {
            "ek_type": info.ek_type,
            "ek_cert_index": info.cert_index,
            "ek_certificate": info.certificate,
            "ek_public": info.public,
            "srk_public": bytes(srk_pub.marshal()),
            "srk_name": bytes(srk_name),
            "ak_public": bytes(ak_pub.marshal()),
            "ak_name": bytes(ak_name),
        }

    # -- proofs --------------------------------------------------------------
    def activate(self, target: str, id_object: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the SRK or the AK as the credential's object and the EK as its key.

        The TPM returns the secret only if the credential names exactly that object (its name covers its
        public area, attributes included) and was made for this TPM's EK.
        """
        t = self.t
        if target not in ACTIVATION_TARGETS:
            raise TpmError(f"unknown activation target {target!r}; expected one of {', '.join(ACTIVATION_TARGETS)}")
        obj = self.node.srk() if target == "srk" else self.ak(create=False)
        key = self.ek()
        blob, _rest = t.TPM2B_ID_OBJECT.unmarshal(id_object)
        secret, _rest = t.TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)
        session = self._endorsement_session()
        try:
            with tpm_errors(f"activating the controller's credential for the {target.upper()}"):
                got = self.ctx.activate_credential(
                    activate_handle=obj,
                    key_handle=key,
                    credential_blob=blob,
                    secret=secret,
                    session1=t.ESYS_TR.PASSWORD,
                    session2=session,
                )
        finally:
            try:
                self.ctx.flush_context(session)
            except t.TSS2_Exception:
                pass  # a failed command may have ended the session already
        return bytes(got)

    def quote(self, nonce: bytes, selection: PcrSelection) -> Quote:
        """TPM2_Quote by the AK over ``selection`` with the controller's nonce as qualifying data."""
        t = self.t
        ak = self.ak(create=False)
        sel = t.TPML_PCR_SELECTION.parse(str(selection))
        with tpm_errors(f"quoting PCRs {selection}"):
            attest, signature = self.ctx.quote(
                sign_handle=ak,
                pcr_select=sel,
                qualifying_data=t.TPM2B_DATA(buffer=nonce),
                in_scheme=t.TPMT_SIG_SCHEME(scheme=t.TPM2_ALG.NULL),
            )
        values = self.node.read_pcrs(selection)
        return Quote(attest=bytes(attest), signature=bytes(signature.marshal()), pcr_values=values)


def answer_challenge(attestor: Attestor, request: dict) -> dict:
    """The node's answers to a controller's Challenge.request(): per target the secret or the TPM's refusal, a quote.

    A refused activation is an answer, not a failure here: the controller decides what it means.
    """
    answers: dict = {}
    for target, cred in sorted(request["credentials"].items()):
        try:
            answers[target] = {"secret": attestor.activate(target, cred["id_object"], cred["encrypted_secret"])}
        except (TpmError, BackendError) as err:
            answers[target] = {"error": str(err)}
    if request.get("nonce") is None:  # activation only
        return answers
    try:
        quote = attestor.quote(bytes(request["nonce"]), PcrSelection.parse(request["pcrs"]))
    except (TpmError, BackendError) as err:
        answers["quote"] = {"error": str(err)}
    else:
        answers["quote"] = {"attest": quote.attest, "signature": quote.signature, "pcr_values": quote.pcr_values}
    return answers
