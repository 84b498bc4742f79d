# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Object and NV templates: the SRK, the epoch counter and the keyslot object."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.context import pytss

SRK_HANDLE = 0x81000001
EPOCH_NV_INDEX = 0x01C10000
EPOCH_NV_SIZE = 8


def srk_public():
    """TCG storage primary key template, ECC NIST P-256 with AES-128-CFB (TCG Provisioning Guidance)."""
    t = pytss()
    attrs = (
        t.TPMA_OBJECT.USERWITHAUTH
        | t.TPMA_OBJECT.RESTRICTED
        | t.TPMA_OBJECT.DECRYPT
        | t.TPMA_OBJECT.NODA
        | t.TPMA_OBJECT.FIXEDTPM
        | t.TPMA_OBJECT.FIXEDPARENT
        | t.TPMA_OBJECT.SENSITIVEDATAORIGIN
    )
    params = t.TPMU_PUBLIC_PARMS(
        eccDetail=t.TPMS_ECC_PARMS(
            symmetric=t.TPMT_SYM_DEF_OBJECT(
                algorithm=t.TPM2_ALG.AES,
                keyBits=t.TPMU_SYM_KEY_BITS(aes=128),
                mode=t.TPMU_SYM_MODE(aes=t.TPM2_ALG.CFB),
            ),
            scheme=t.TPMT_ECC_SCHEME(scheme=t.TPM2_ALG.NULL),
            curveID=t.TPM2_ECC.NIST_P256,
            kdf=t.TPMT_KDF_SCHEME(scheme=t.TPM2_ALG.NULL),
        )
    )
    area = t.TPMT_PUBLIC(type=t.TPM2_ALG.ECC, nameAlg=t.TPM2_ALG.SHA256, objectAttributes=attrs, parameters=params)
    return t.TPM2B_PUBLIC(publicArea=area)


def epoch_nv_public(index: int = EPOCH_NV_INDEX):
    """A 64-bit NV counter anyone with TPM access may increment (that only revokes) and read."""
    t = pytss()
    attrs = t.TPMA_NV.AUTHWRITE | t.TPMA_NV.AUTHREAD | t.TPMA_NV.NO_DA | (t.TPM2_NT.COUNTER << t.TPMA_NV.TPM2_NT_SHIFT)
    return t.TPM2B_NV_PUBLIC(
        nvPublic=t.TPMS_NV_PUBLIC(nvIndex=index, nameAlg=t.TPM2_ALG.SHA256, attributes=attrs, dataSize=EPOCH_NV_SIZE)
    )


def keyslot_public(auth_policy: bytes, migratable: bool):
    """Sealed-data object reachable only through its policy (no userWithAuth).

    Without fixedTPM/fixedParent it can be duplicated, but only under a policy
    the VM's policy key approved; with them it can never leave this TPM. A
    migratable object also sets encryptedDuplication: the TPM then refuses to
    duplicate it to no parent (TPM_RH_NULL) or without an inner wrapper, so even
    a wrongly signed grant cannot make it export the VRK unencrypted.
    """
    t = pytss()
    attrs = t.TPMA_OBJECT.NODA | t.TPMA_OBJECT.ADMINWITHPOLICY
    if migratable:
        attrs |= t.TPMA_OBJECT.ENCRYPTEDDUPLICATION
    else:
        attrs |= t.TPMA_OBJECT.FIXEDTPM | t.TPMA_OBJECT.FIXEDPARENT
    area = t.TPMT_PUBLIC(
        type=t.TPM2_ALG.KEYEDHASH,
        nameAlg=t.TPM2_ALG.SHA256,
        objectAttributes=attrs,
        authPolicy=auth_policy,
        parameters=t.TPMU_PUBLIC_PARMS(
            keyedHashDetail=t.TPMS_KEYEDHASH_PARMS(scheme=t.TPMT_KEYEDHASH_SCHEME(scheme=t.TPM2_ALG.NULL))
        ),
    )
    return t.TPM2B_PUBLIC(publicArea=area)


def inner_wrapper_symmetric():
    """AES-128-CFB: the inner wrapper of a duplicated keyslot (TPM2_Duplicate and TPM2_Import use the same)."""
    t = pytss()
    return t.TPMT_SYM_DEF_OBJECT(
        algorithm=t.TPM2_ALG.AES, keyBits=t.TPMU_SYM_KEY_BITS(aes=128), mode=t.TPMU_SYM_MODE(aes=t.TPM2_ALG.CFB)
    )


def session_symmetric():
    t = pytss()
    return t.TPMT_SYM_DEF(
        algorithm=t.TPM2_ALG.AES, keyBits=t.TPMU_SYM_KEY_BITS(aes=128), mode=t.TPMU_SYM_MODE(aes=t.TPM2_ALG.CFB)
    )
