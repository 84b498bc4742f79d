# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The trust root: first root, rotations, rollback and expiry; one test per attack, injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    FormatError,
    InputError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import Ed25519PrivateKey
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, trust_root
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.payload import MANIFEST_PAYLOAD_TYPE

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
YEAR = timedelta(days=365)


def key(n: int):
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


OLD = (key(1), key(2), key(3))
NEW = (key(4), key(5), key(6))


def keyid(k) -> str:
    return dsse.keyid_of(dsse.raw_public(k))


def root_v1(keys=OLD, threshold=2, issued_at=NOW - timedelta(days=1), expires=NOW + YEAR):
    return trust_root.new_root(keys, threshold, issued_at=issued_at, expires=expires)


def only_signed_by(envelope: dsse.Envelope, keys) -> dsse.Envelope:
    wanted = {keyid(k) for k in keys}
    return dsse.Envelope(
        envelope.payload, envelope.payload_type, tuple(s for s in envelope.signatures if s.keyid in wanted)
    )


def rotated(
    old_env, old_keys=OLD[:2], new_keys=NEW, threshold=2, issued_at=NOW - timedelta(hours=1), expires=NOW + YEAR
):
    return trust_root.rotate(old_env, old_keys, new_keys, threshold, issued_at=issued_at, expires=expires)


def resigned_payload(envelope: dsse.Envelope, signers, **changes) -> dsse.Envelope:
    doc = canonical.loads(envelope.payload, "root")
    doc.update(changes)
    return dsse.sign(canonical.dumps(doc), trust_root.ROOT_PAYLOAD_TYPE, signers)


# ---------------------------------------------------------------- first root


def test_first_root_loads():
    envelope = root_v1()
    root = trust_root.load_root(dsse.parse_envelope(dsse.envelope_to_bytes(envelope), "root"), "root", NOW)
    assert root.version == 1
    assert root.threshold == 2
    assert root.keys == {keyid(k): dsse.raw_public(k) for k in OLD}
    assert root.expires == NOW + YEAR
    assert root.envelope == envelope
    assert trust_root.root_version(envelope) == 1


def test_first_root_signed_below_its_own_threshold_refused():
    envelope = only_signed_by(root_v1(), OLD[:1])
    with pytest.raises(VerificationError, match=r"1 of 2 required signatures"):
        trust_root.load_root(envelope, "root", NOW)


def test_m_of_n_two_of_three_accepts_any_two_keys():
    for signers in (OLD[:2], OLD[1:], [OLD[0], OLD[2]]):
        root = trust_root.load_root(only_signed_by(root_v1(), signers), "root", NOW)
        assert root.threshold == 2


def test_first_root_expired_refused():
    envelope = root_v1(issued_at=NOW - 2 * YEAR, expires=NOW - YEAR)
    with pytest.raises(VerificationError, match=r"trust root version 1 expired at 2029-06-01T12:00:00Z"):
        trust_root.load_root(envelope, "root", NOW)


def test_first_root_expires_exactly_now_refused():
    with pytest.raises(VerificationError, match="expired"):
        trust_root.load_root(root_v1(expires=NOW), "root", NOW)


def test_manifest_envelope_is_not_a_root():
    envelope = dsse.sign(root_v1().payload, MANIFEST_PAYLOAD_TYPE, OLD)
    with pytest.raises(VerificationError, match=r"payloadType is .*manifest.*expected 'application/vnd.ironclaw.trust"):
        trust_root.load_root(envelope, "root", NOW)


def test_tampered_root_payload_refused():
    envelope = root_v1(threshold=2)
    doc = canonical.loads(envelope.payload, "root")
    doc["threshold"] = 1
    forged = dsse.Envelope(canonical.dumps(doc), envelope.payload_type, envelope.signatures)
    with pytest.raises(VerificationError, match=r"0 of 1 required signatures: valid from \[\]; unknown keys \[\]"):
        trust_root.load_root(forged, "root", NOW)


def test_root_keyid_must_match_key():
    doc = canonical.loads(root_v1().payload, "root")
    doc["keys"][0]["keyid"] = "ab" * 32
    with pytest.raises(FormatError, match=r"keys\[0\]\.keyid.*SHA-256 of its public key"):
        trust_root.parse_root_payload(canonical.dumps(doc), "root")


def test_root_duplicate_key_refused():
    doc = canonical.loads(root_v1().payload, "root")
    doc["keys"] = [doc["keys"][0], doc["keys"][0]]
    with pytest.raises(FormatError, match="listed twice"):
        trust_root.parse_root_payload(canonical.dumps(doc), "root")
    with pytest.raises(InputError, match="given twice"):
        trust_root.new_root([OLD[0], OLD[0]], 1, issued_at=NOW, expires=NOW + YEAR)


def test_root_threshold_above_key_count_refused():
    with pytest.raises(InputError, match=r"'threshold' must be from 1 to 3, found 4"):
        trust_root.new_root(OLD, 4, issued_at=NOW, expires=NOW + YEAR)
    with pytest.raises(InputError, match=r"'threshold' must be from 1 to 3, found 0"):
        trust_root.new_root(OLD, 0, issued_at=NOW, expires=NOW + YEAR)


def test_root_unknown_field_refused():
    doc = canonical.loads(root_v1().payload, "root")
    doc["note"] = "x"
    with pytest.raises(FormatError, match="unknown field"):
        trust_root.parse_root_payload(canonical.dumps(doc), "root")


# ---------------------------------------------------------------- rotation


def test_rotation_accepted_with_thresholds_of_old_and_new():
    v1 = trust_root.load_root(root_v1(), "root", NOW)
    v2_env = rotated(v1.envelope)
    v2 = trust_root.update_root(v1, v2_env, NOW)
    assert v2.version == 2
    assert v2.keys == {keyid(k): dsse.raw_public(k) for k in NEW}
    assert {s.keyid for s in v2_env.signatures} == {keyid(k) for k in OLD[:2] + NEW}


def test_rotation_signed_only_by_new_keys_refused():
    v1 = trust_root.load_root(root_v1(), "root", NOW)
    candidate = rotated(v1.envelope, old_keys=[])
    with pytest.raises(
        VerificationError, match=r"keys of trusted version 1\): 0 of 2 required signatures.*unknown keys"
    ):
        trust_root.update_root(v1, candidate, NOW)


def test_rotation_signed_only_by_old_keys_refused():
    v1 = trust_root.load_root(root_v1(), "root", NOW)
    candidate = only_signed_by(rotated(v1.envelope), OLD)
    with pytest.raises(VerificationError, match=r"its own keys, version 2\): 0 of 2 required signatures"):
        trust_root.update_root(v1, candidate, NOW)


def test_rotation_with_one_old_key_of_two_required_refused():
    v1 = trust_root.load_root(root_v1(), "root", NOW)
    candidate = rotated(v1.envelope, old_keys=OLD[:1])
    with pytest.raises(VerificationError, match=r"1 of 2 required signatures"):
        trust_root.update_root(v1, candidate, NOW)


def test_rotate_refuses_a_signer_outside_the_old_root():
    with pytest.raises(InputError, match="is not a key of trust root version 1"):
        rotated(root_v1(), old_keys=[NEW[0]])


def test_trust_root_rollback_refused():
    v1 = trust_root.load_root(root_v1(), "root", NOW)
    v2 = trust_root.update_root(v1, rotated(v1.envelope), NOW)
    with pytest.raises(VerificationError, match=r"^trust-root rollback: .*version 1, but version 2 is already trusted"):
        trust_root.update_root(v2, v1.envelope, NOW)


def test_trust_root_same_version_other_bytes_refused():
    v1 = trust_root.load_root(root_v1(), "root", NOW)
    other_v1 = root_v1(keys=NEW)
    with pytest.raises(VerificationError, match="^trust-root rollback: .*version 1"):
        trust_root.update_root(v1, other_v1, NOW)


def test_trust_root_same_root_again_unchanged():
    v1 = trust_root.load_root(root_v1(), "root", NOW)
    assert trust_root.update_root(v1, root_v1(), NOW) is v1


def test_skipped_version_refused():
    v1 = trust_root.load_root(root_v1(), "root", NOW)
    v3_env = resigned_payload(rotated(v1.envelope), OLD + NEW, version=3)
    with pytest.raises(VerificationError, match="version skipped: expected version 2, found 3"):
        trust_root.update_root(v1, v3_env, NOW)


def test_expired_rotation_candidate_refused():
    v1 = trust_root.load_root(root_v1(), "root", NOW)
    candidate = rotated(v1.envelope, expires=NOW - timedelta(seconds=1))
    with pytest.raises(VerificationError, match="trust root version 2 expired"):
        trust_root.update_root(v1, candidate, NOW)


def test_rotation_away_from_an_expired_root_accepted():
    v1_env = root_v1(issued_at=NOW - 2 * YEAR, expires=NOW - YEAR)
    v1 = trust_root.load_root(v1_env, "root", NOW - 2 * YEAR + timedelta(days=1))
    assert trust_root.update_root(v1, rotated(v1_env), NOW).version == 2


# ---------------------------------------------------------------- walking a history


def _history():
    days = timedelta(days=1)
    v1 = root_v1(issued_at=NOW - 30 * days, expires=NOW - 10 * days)
    v2 = rotated(v1, issued_at=NOW - 12 * days, expires=NOW - 5 * days)
    v3 = trust_root.rotate(v2, NEW[:2], OLD, 2, issued_at=NOW - 6 * days, expires=NOW + YEAR)
    return v1, v2, v3


def test_walk_applies_candidates_in_version_order():
    v1, v2, v3 = _history()
    trusted = trust_root.load_root(v1, "root", NOW - timedelta(days=20))
    final = trust_root.walk(trusted, [v3, v1, v2], NOW)
    assert final.version == 3
    assert final.envelope == v3


def test_walk_skips_older_roots_and_refuses_a_gap():
    v1, v2, v3 = _history()
    trusted = trust_root.load_root(v1, "root", NOW - timedelta(days=20))
    at_v2 = trust_root.walk(trusted, [v2], NOW - timedelta(days=8))
    assert trust_root.walk(at_v2, [v1, v3], NOW).version == 3
    with pytest.raises(VerificationError, match="expected version 2, found 3"):
        trust_root.walk(trusted, [v3], NOW)


def test_walk_refuses_an_expired_final_root():
    v1, v2, _v3 = _history()
    trusted = trust_root.load_root(v1, "root", NOW - timedelta(days=20))
    with pytest.raises(VerificationError, match="trust root version 2 expired"):
        trust_root.walk(trusted, [v2], NOW)


def test_load_chain_from_version_one():
    v1, v2, v3 = _history()
    assert trust_root.load_chain([v1, v2, v3], NOW).version == 3
    with pytest.raises(VerificationError, match="must start at version 1"):
        trust_root.load_chain([rotated(root_v1())], NOW)
    with pytest.raises(VerificationError, match="no trust root"):
        trust_root.load_chain([], NOW)
