"""A10, what the controller and the air-gapped signer sign: every field shown, only confirmed requests, bounded
lifetimes; and the offline exchange of destruction receipts. Each refusal asserts its type and that the exchange
directory did not change."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._authority import signing
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import LifetimeError, UnconfirmedError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto.lib import Ed25519PrivateKey
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy import receipt as rc
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse, payload, requests

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
UUID = "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"
OTHER = "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6c"


def manifest(vm_uuid: str = UUID, *, days: int = 90, version: int = 2, migration: bool = True) -> payload.Manifest:
    statement = {
        "subject": {"vmid": 100, "vm_uuid": vm_uuid, "vm_ctime": 1700000000, "cluster": "lab"},
        "node": {"name": "node-a", "id": "000b" + "11" * 32},
        "keyslot": {"name": "keyslot.json", "sha256": "22" * 32, "keyslot_id": "33" * 16},
        "blobs": [{"name": "api-token", "sha256": "aa" * 32, "size": 10, "generation": 3}],
        "state": "active",
        "policy": {"migratable": True, "pcrs": "sha256:0,7"},
    }
    if migration:
        statement["migration"] = {"source": "node-0", "target": "node-a", "not_after": "2030-06-01T13:00:00Z"}
    return payload.new_manifest(
        statement,
        version=version,
        prev="44" * 32 if version > 1 else None,
        issued_at=NOW,
        expires=NOW + timedelta(days=days),
    )


def files(directory) -> dict[str, bytes]:
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


@pytest.fixture
def exchange(tmp_path):
    """An exchange directory with two pending manifest requests: (directory, [digest of each])."""
    sign_dir = str(tmp_path / "exchange")
    digests = []
    for vm_uuid in (UUID, OTHER):
        _none, path = requests.exchange(sign_dir, manifest(vm_uuid))
        digests.append(requests.read_request(path).digest)
    return sign_dir, digests


def sign(sign_dir, *, confirm=None, answer=None, shown=None, max_days=90):
    return requests.sign_confirmed(sign_dir, [KEY], confirm=confirm, answer=answer, shown=shown, max_days=max_days)


# -- what the signer shows --------------------------------------------------------------


def test_summary_carries_every_field_of_the_statement():
    m = manifest()
    data = m.to_bytes()
    summary = signing.summary_of_manifest(m, data)
    assert summary["digest"] == hashlib.sha256(data).hexdigest()
    assert summary["node"] == {"name": "node-a", "id": "000b" + "11" * 32}
    assert summary["subject"] == {"vmid": 100, "vm_uuid": UUID, "vm_ctime": 1700000000, "cluster": "lab"}
    assert summary["blobs"] == [{"name": "api-token", "sha256": "aa" * 32, "size": 10, "generation": 3}]
    assert summary["keyslot"]["keyslot_id"] == "33" * 16 and summary["prev"] == "44" * 32
    assert summary["migration"] == {"source": "node-0", "target": "node-a", "not_after": "2030-06-01T13:00:00Z"}
    assert (summary["issued_at"], summary["expires"]) == ("2030-06-01T12:00:00Z", "2030-08-30T12:00:00Z")
    assert summary["lifetime"] == "90 days, 0:00:00"
    # Nothing of the payload is left out: every field it holds is shown (whatever fields a later format adds).
    shown = set(summary) - {"kind", "digest", "lifetime"}
    assert set(m.to_dict()) - {"format"} <= shown


def test_summary_shows_the_recorded_policy():
    m = manifest()
    assert signing.summary_of_manifest(m, m.to_bytes())["policy"] == {"migratable": True, "pcrs": "sha256:0,7"}


def test_request_file_summary_is_the_full_one_and_tampering_is_refused(exchange):
    sign_dir, digests = exchange
    (first, _second) = requests.pending_requests(sign_dir)
    assert first.summary["digest"] == digests[0] and first.summary["subject"]["vm_ctime"] == 1700000000
    assert digests[0] in signing.headline(first.summary)


# -- confirmation -----------------------------------------------------------------------


def test_unconfirmed_requests_are_not_signed(exchange):
    sign_dir, digests = exchange
    before = files(sign_dir)
    for answer in (None, "", "no", "N"):
        assert sign(sign_dir, answer=answer, shown=digests) == []
    assert files(sign_dir) == before


def test_confirmation_by_prefix_signs_only_that_request(exchange):
    sign_dir, digests = exchange
    done = sign(sign_dir, confirm=[digests[1][:16].upper()])
    assert [r.digest for r in done] == [digests[1]]
    signed = [name for name in os.listdir(sign_dir) if name.endswith(".signed.json")]
    assert signed == [f"{OTHER}-v2.signed.json"]
    assert [r.digest for r in requests.pending_requests(sign_dir)] == [digests[0]]


def test_yes_at_the_prompt_signs_exactly_the_requests_shown(exchange):
    sign_dir, digests = exchange
    # A request that appears after the prompt was shown is not covered by its "yes".
    late = manifest("6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6d")
    requests.exchange(sign_dir, late)
    done = sign(sign_dir, answer="yes", shown=digests)
    assert sorted(r.digest for r in done) == sorted(digests)
    assert [r.document.subject.vm_uuid for r in requests.pending_requests(sign_dir)] == [late.subject.vm_uuid]


@pytest.mark.parametrize(
    ("confirm", "message"),
    [
        (["0123456789abcde"], "16 or more hex"),  # too short
        (["zz" * 8], "16 or more hex"),  # not hex
        (["ab" * 8], "matches no pending request"),  # unmatched
    ],
)
def test_unconfirmable_prefix_signs_nothing_at_all(exchange, confirm, message):
    sign_dir, digests = exchange
    before = files(sign_dir)
    with pytest.raises(UnconfirmedError, match=message):
        sign(sign_dir, confirm=[digests[0][:16], *confirm])  # the good prefix is not signed either
    assert files(sign_dir) == before


def test_too_short_prefix_is_refused():
    digest = "ab" * 32
    with pytest.raises(UnconfirmedError, match="16 or more hex"):
        signing.resolve_prefixes([digest[:15]], [digest])
    assert signing.resolve_prefixes([digest[:16]], [digest]) == [digest]


def test_ambiguous_prefix_is_refused():
    one, two = "ab" * 8 + "01" * 24, "ab" * 8 + "02" * 24
    with pytest.raises(UnconfirmedError, match="matches 2 requests"):
        signing.resolve_prefixes(["ab" * 8], [one, two])
    assert signing.resolve_prefixes(["ab" * 8 + "02"], [one, two]) == [two]


def test_unmatched_prefix_is_refused():
    with pytest.raises(UnconfirmedError, match="matches no pending request"):
        signing.resolve_prefixes(["cd" * 8], ["ab" * 32])


def test_typed_prefixes_at_the_prompt_confirm_like_ironclaw_sign_confirm(exchange):
    sign_dir, digests = exchange
    assert [r.digest for r in sign(sign_dir, answer=f" {digests[0][:20]} ", shown=digests)] == [digests[0]]
    with pytest.raises(UnconfirmedError):
        sign(sign_dir, answer="sure", shown=digests)


# -- lifetime ---------------------------------------------------------------------------


def test_lifetime_of_91_days_is_refused_and_90_accepted():
    issued = "2030-06-01T12:00:00Z"
    assert signing.check_lifetime(issued, "2030-08-30T12:00:00Z", 90, "m") == timedelta(days=90)
    with pytest.raises(LifetimeError, match="beyond ironclaw_manifest_max_days"):
        signing.check_lifetime(issued, "2030-08-31T12:00:00Z", 90, "m")
    with pytest.raises(LifetimeError):
        signing.check_lifetime(issued, "2030-08-30T12:00:01Z", 90, "m")  # a second too long


def test_max_days_beyond_366_is_refused():
    assert signing.check_max_days(366) == 366
    for bad in (367, 0, -1):
        with pytest.raises(LifetimeError):
            signing.check_max_days(bad)
    with pytest.raises(LifetimeError, match="366"):
        signing.check_lifetime("2030-06-01T12:00:00Z", "2031-06-01T12:00:00Z", 367, "m")


def test_ten_year_request_confirmed_is_refused_and_nothing_signed(exchange):
    sign_dir, digests = exchange
    _none, path = requests.exchange(sign_dir, manifest("6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6e", days=3650))
    long_lived = requests.read_request(path)
    assert long_lived.summary["expires"] == "2040-05-29T12:00:00Z", "the signer is shown the expiry"
    before = files(sign_dir)
    with pytest.raises(LifetimeError, match="3650 days"):
        sign(sign_dir, answer="yes", shown=[*digests, long_lived.digest])
    assert files(sign_dir) == before
    with pytest.raises(LifetimeError):
        sign(sign_dir, confirm=[long_lived.digest[:16]], max_days=367)


# -- destruction receipts through the exchange -------------------------------------------------


def receipt(locations, *, key_status="destroyed", tombstone=None, issued_at="2030-06-01T12:00:00Z") -> dict:
    return rc.build_receipt(
        vmid=100,
        vm_uuid=UUID,
        cluster="lab",
        policy_key={"key_name": None, "destroyed_at": issued_at, "status": key_status},
        tombstone=tombstone or {"version": 3, "payload_sha256": "55" * 32},
        locations=[
            {
                "node": node,
                "status": status,
                "evidence": None if status == "unreachable" else {"destroyed_at": issued_at},
            }
            for node, status in locations
        ],
        issued_at=issued_at,
    )


def test_receipt_request_round_trip(tmp_path):
    sign_dir = str(tmp_path / "exchange")
    document = receipt([("a", "destroyed")])
    request = requests.request_receipt(sign_dir, document)
    assert request.summary["kind"] == "receipt" and request.summary["locations"][0]["node"] == "a"
    assert requests.receipt_requests(sign_dir, UUID) == [(request, None)]
    (done,) = sign(sign_dir, confirm=[request.digest[:16]])
    ((again, envelope),) = requests.receipt_requests(sign_dir, UUID)
    assert again == done and envelope.payload == request.payload
    keys = {dsse.keyid_of(dsse.raw_public(KEY)): dsse.raw_public(KEY)}
    assert dsse.verify_threshold(envelope, rc.RECEIPT_PAYLOAD_TYPE, keys, 1, "receipt") == request.payload


def test_rerun_that_finds_everything_destroyed_adds_no_receipt():
    first = receipt([("a", "destroyed"), ("b", "destroyed")])
    rerun = receipt([("a", "already-destroyed"), ("b", "already-destroyed")], key_status="already-destroyed")
    assert rc.adds_to(first, None) is True
    assert rc.adds_to(rerun, first) is False
    # A node down in both runs adds nothing either; one dealt with since, or destroyed now, does.
    partial = receipt([("a", "destroyed"), ("b", "unreachable")])
    still = receipt([("a", "already-destroyed"), ("b", "unreachable")], key_status="already-destroyed")
    assert rc.adds_to(still, partial) is False
    assert rc.adds_to(
        receipt([("a", "already-destroyed"), ("b", "destroyed")], key_status="already-destroyed"), partial
    )
    assert rc.adds_to(receipt([("a", "already-destroyed")], key_status="destroyed"), first)
    assert rc.adds_to(
        rerun, receipt([("a", "destroyed"), ("b", "destroyed")], tombstone={"version": 4, "payload_sha256": "66" * 32})
    )
