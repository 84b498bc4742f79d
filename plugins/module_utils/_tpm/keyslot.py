# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sealing a VM root key (VRK) in the TPM and unsealing it under a signed approval.

TPM work is per VM: sealing is one TPM2_Create; unsealing is one policy
session and one TPM2_Unseal, whatever the number of secrets. Both carry the
VRK in encrypted parameters (a session salted with the SRK), so it never
crosses the TPM interface in the clear.
"""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import PolicyError, TpmError
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy import digest as pd
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm import compat, templates
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.context import pytss, refusal, tpm_errors
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode


def _encrypting_session(node: TpmNode, session_type, attributes):
    t = node.t
    sess = node.ctx.start_auth_session(
        node.srk(), t.ESYS_TR.NONE, session_type, templates.session_symmetric(), t.TPM2_ALG.SHA256
    )
    node.ctx.trsess_set_attributes(sess, t.TPMA_SESSION.CONTINUESESSION | attributes)
    return sess


def _flush(node: TpmNode, *handles) -> None:
    for handle in handles:
        if handle is not None:
            try:
                node.ctx.flush_context(handle)
            except node.t.TSS2_Exception:
                pass


def seal_vrk(node: TpmNode, vrk: bytes, auth_policy: bytes, migratable: bool) -> tuple[bytes, bytes]:
    """TPM2_Create a sealed-data object holding the VRK; returns marshaled (TPM2B_PUBLIC, TPM2B_PRIVATE)."""
    t = node.t
    srk = node.srk()
    sensitive = t.TPM2B_SENSITIVE_CREATE(sensitive=t.TPMS_SENSITIVE_CREATE(data=t.TPM2B_SENSITIVE_DATA(vrk)))
    sess = None
    try:
        with tpm_errors("sealing the VM root key"):
            sess = _encrypting_session(node, t.TPM2_SE.HMAC, t.TPMA_SESSION.DECRYPT)
            private, public, *_creation = node.ctx.create(
                srk,
                sensitive,
                templates.keyslot_public(auth_policy, migratable),
                session1=t.ESYS_TR.PASSWORD,
                session2=sess,
            )
    finally:
        _flush(node, sess)
    return public.marshal(), private.marshal()


def object_attributes(public: bytes) -> int:
    """TPMA_OBJECT of a marshaled keyslot public area (for tests and checks)."""
    pub = _unmarshal(pytss(), public, "TPM2B_PUBLIC", "keyslot public area")
    return int(pub.publicArea.objectAttributes)


def auth_policy(public: bytes) -> bytes:
    """The authPolicy the TPM object was created with (integrity-protected by the TPM)."""
    pub = _unmarshal(pytss(), public, "TPM2B_PUBLIC", "keyslot public area")
    return bytes(pub.publicArea.authPolicy)


def _unmarshal(t, data: bytes, typename: str, what: str):
    cls = getattr(t, typename)
    try:
        obj, used = cls.unmarshal(data)
    except Exception as exc:
        raise PolicyError(f"{what}: not a valid {typename}: {exc}") from exc
    if used != len(data):
        raise PolicyError(f"{what}: {len(data) - used} trailing bytes after the {typename}")
    return obj


def _signature(node: TpmNode, r: bytes, s: bytes):
    t = node.t
    sig = t.TPMT_SIGNATURE(sigAlg=t.TPM2_ALG.ECDSA)
    sig.signature.ecdsa.hash = t.TPM2_ALG.SHA256
    sig.signature.ecdsa.signatureR = r
    sig.signature.ecdsa.signatureS = s
    return sig


def unseal_vrk(
    node: TpmNode,
    *,
    public: bytes,
    private: bytes,
    key_public: bytes,
    key_name: bytes,
    policy_ref: bytes,
    approved_policy: bytes,
    signature_r: bytes,
    signature_s: bytes,
    epoch: int,
    pcr_selection=None,
    pcr_digest: bytes | None = None,
) -> bytes:
    """Run the approved policy in a session and unseal the VRK.

    The caller has already checked the approval in software for clear
    messages; the TPM is what enforces it.
    """
    t = node.t
    srk = node.srk()
    nv = node.epoch_nv()
    pub = _unmarshal(t, public, "TPM2B_PUBLIC", "keyslot public area")
    priv = _unmarshal(t, private, "TPM2B_PRIVATE", "keyslot private area")
    key_pub = _unmarshal(t, key_public, "TPM2B_PUBLIC", "policy key")
    a_hash = pd.approval_hash(approved_policy, policy_ref)
    key = obj = sess = None
    try:
        with tpm_errors("checking the approval signature", "the approval was not signed by this VM's policy key"):
            key = node.ctx.load_external(key_pub, hierarchy=t.ESYS_TR.OWNER)
            ticket = node.ctx.verify_signature(key, a_hash, _signature(node, signature_r, signature_s))
        _flush(node, key)
        key = None
        with tpm_errors("loading the keyslot", "the keyslot was not sealed under this node's SRK"):
            obj = node.ctx.load(srk, priv, pub)
        with tpm_errors("starting the policy session"):
            sess = _encrypting_session(node, t.TPM2_SE.POLICY, t.TPMA_SESSION.ENCRYPT)
            node.ctx.policy_command_code(sess, t.TPM2_CC.Unseal)
            compat.policy_secret(node.ctx, srk, sess)
        try:
            node.ctx.policy_nv(nv, nv, sess, pd.epoch_operand(epoch), 0, t.TPM2_EO.EQ)
        except t.TSS2_Exception as exc:
            current = node.epoch()
            if current == epoch:
                raise TpmError(f"the epoch check failed at epoch {epoch}: {refusal(exc)}") from exc
            raise PolicyError(
                f"the approval is for epoch {epoch} but this node is at epoch {current}: it was revoked; "
                "the controller must sign a new approval (re-run the seal role or provision playbook)"
            ) from exc
        if pcr_selection is not None:
            sel = t.TPML_PCR_SELECTION.parse(str(pcr_selection))
            try:
                node.ctx.policy_pcr(sess, pcr_digest, sel)
            except t.TSS2_Exception as exc:
                raise PolicyError(
                    f"PCRs {pcr_selection} no longer hold the values the approval was signed for "
                    "(kernel, firmware or boot change?); have the controller sign a new approval"
                ) from exc
        with tpm_errors("authorizing the policy", "the approval does not match this keyslot's policy key or VM"):
            compat.policy_authorize(node.ctx, sess, approved_policy, policy_ref, key_name, ticket)
        with tpm_errors("unsealing the VM root key"):
            vrk = bytes(node.ctx.unseal(obj, session1=sess))
    finally:
        _flush(node, key, sess, obj)
    if len(vrk) != 32:
        raise TpmError(f"the keyslot unsealed to {len(vrk)} bytes, expected a 32-byte VM root key")
    return vrk
