"""Policy digests computed in software must equal what a real TPM computes; policy parsing is strict."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy import digest as pd
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.keyname import (
    parse_policy_key_public,
    policy_key_public,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.spec import PolicySpec, parse_policy
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm import compat
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode

t = pytest.importorskip("tpm2_pytss")


@pytest.fixture
def node(swtpm):
    with TpmNode(swtpm.tcti) as n:
        n.provision()
        yield n


def trial(node, *steps):
    sess = node.ctx.start_auth_session(
        t.ESYS_TR.NONE, t.ESYS_TR.NONE, t.TPM2_SE.TRIAL, t.TPMT_SYM_DEF(algorithm=t.TPM2_ALG.NULL), t.TPM2_ALG.SHA256
    )
    try:
        for step in steps:
            step(sess)
        return bytes(node.ctx.policy_get_digest(sess))
    finally:
        node.ctx.flush_context(sess)


@pytest.mark.swtpm
def test_unseal_policy_digest_matches_tpm_trial(node):
    srk, nv = node.srk(), node.epoch_nv()
    epoch = node.epoch()
    tpm = trial(
        node,
        lambda s: node.ctx.policy_command_code(s, t.TPM2_CC.Unseal),
        lambda s: compat.policy_secret(node.ctx, srk, s),
        lambda s: node.ctx.policy_nv(nv, nv, s, pd.epoch_operand(epoch), 0, t.TPM2_EO.EQ),
    )
    assert tpm == pd.unseal_policy(node.name(srk), node.name(nv), epoch)
    # A different epoch or node name gives a different digest (the test can fail).
    assert tpm != pd.unseal_policy(node.name(srk), node.name(nv), epoch + 1)


@pytest.mark.swtpm
@pytest.mark.parametrize("text", ["sha256:7", "sha256:0,7,23", "sha1:0+sha256:7"])
def test_pcr_policy_digest_matches_tpm_trial(node, text):
    sel = PcrSelection.parse(text)
    values = node.read_pcrs(sel)
    digest = sel.digest(values)
    tpm = trial(node, lambda s: node.ctx.policy_pcr(s, digest, t.TPML_PCR_SELECTION.parse(str(sel))))
    assert tpm == pd.pcr(pd.ZERO_DIGEST, sel, digest)


@pytest.mark.swtpm
def test_duplication_select_digest_matches_tpm_trial(node):
    name = node.name(node.srk())
    tpm = trial(node, lambda s: node.ctx.policy_duplication_select(s, b"", name, False))
    assert tpm == pd.duplication_select(pd.ZERO_DIGEST, name)


@pytest.mark.swtpm
def test_policy_key_name_matches_the_tpm(node):
    key = ec.generate_private_key(ec.SECP256R1())
    public = policy_key_public(key.public_key())
    parsed, name = parse_policy_key_public(public)
    assert parsed.public_numbers() == key.public_key().public_numbers()
    pub = t.TPM2B_PUBLIC.unmarshal(public)[0]
    handle = node.ctx.load_external(pub, hierarchy=t.ESYS_TR.OWNER)
    try:
        assert bytes(node.ctx.tr_get_name(handle)) == name
    finally:
        node.ctx.flush_context(handle)


def test_authorize_digest_formula():
    key_name = b"\x00\x0b" + bytes(32)
    ref = pd.policy_ref_for("11111111-2222-3333-4444-555555555555")
    inner = hashlib.sha256(bytes(32) + (0x16A).to_bytes(4, "big") + key_name).digest()
    assert pd.authorize(key_name, ref) == hashlib.sha256(inner + ref).digest()
    assert ref == b"ironclaw:vm:11111111-2222-3333-4444-555555555555"


def test_policy_key_public_refuses_malformed():
    public = policy_key_public(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(FormatError, match="expected a"):
        parse_policy_key_public(public + b"\0")
    with pytest.raises(FormatError):
        parse_policy_key_public(public[:2] + public[2:4] + b"\x00\x01" + public[6:])  # wrong nameAlg
    bad_point = public[:-1] + bytes([public[-1] ^ 1])
    with pytest.raises(FormatError, match="not on P-256"):
        parse_policy_key_public(bad_point)
    with pytest.raises(FormatError, match="P-256"):
        policy_key_public(ec.generate_private_key(ec.SECP384R1()).public_key())


# -- PCR selections -------------------------------------------------------------


def test_pcr_selection_text_and_wire_form():
    sel = PcrSelection.parse("sha256:7,0")
    assert str(sel) == "sha256:0,7"
    assert sel.marshal() == bytes.fromhex("00000001000b03810000")
    both = PcrSelection.parse("sha256:1+sha1:2")
    assert str(both) == "sha1:2+sha256:1"  # TPM bank order (by algorithm id)


@pytest.mark.parametrize(
    "text", ["", "sha256", "sha256:", "sha256:24", "sha256:1,1", "md5:1", "sha256:1+sha256:2", "sha256:a", 7]
)
def test_pcr_selection_refuses(text):
    with pytest.raises(InputError):
        PcrSelection.parse(text)


def test_pcr_digest_needs_every_value():
    sel = PcrSelection.parse("sha256:0,7")
    with pytest.raises(InputError, match="sha256:7"):
        sel.digest({"sha256:0": bytes(32)})
    with pytest.raises(InputError, match="wrong length"):
        sel.digest({"sha256:0": bytes(32), "sha256:7": bytes(20)})


# -- keyslot policy ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value, migratable, pcrs",
    [
        (None, True, None),
        ({}, True, None),
        ({"migratable": False}, False, None),
        ({"migratable": True, "pcrs": "sha256:0,7"}, True, "sha256:0,7"),
        ("migratable=true;pcrs=sha256:0,7", True, "sha256:0,7"),
        ("migratable=false", False, None),
        (" migratable = no ; ", False, None),
        ("pcrs=sha256:7", True, "sha256:7"),
    ],
)
def test_policy_forms(value, migratable, pcrs):
    spec = parse_policy(value)
    assert spec.migratable is migratable
    assert (str(spec.pcrs) if spec.pcrs else None) == pcrs


@pytest.mark.parametrize(
    "value, message",
    [
        ({"migratable": True, "foo": 1}, "unknown key"),
        ("migratable=true;foo=1", "unknown key"),
        ("migratable", "not key=value"),
        ("migratable=maybe", "true or false"),
        ({"migratable": "perhaps"}, "true or false"),
        ("migratable=true;migratable=false", "given twice"),
        ("pcrs=sha256:99", "does not exist"),
        (["migratable"], "dict or a string"),
    ],
)
def test_policy_refuses(value, message):
    with pytest.raises(InputError, match=message):
        parse_policy(value)


def test_policy_spec_round_trip():
    assert PolicySpec(False, PcrSelection.parse("sha256:7")).to_dict() == {"migratable": False, "pcrs": "sha256:7"}
