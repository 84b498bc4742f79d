# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""User-given identifiers: VMID, VM uuid, secret name, keyslot id."""

from __future__ import annotations

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError


@pytest.mark.parametrize(("value", "expected"), [(100, 100), (999_999_999, 999_999_999), ("100", 100), ("4242", 4242)])
def test_vmid_accepts_the_range_as_int_or_decimal_string(value, expected):
    result = validate.vmid(value)
    assert result == expected
    assert isinstance(result, int) and not isinstance(result, bool)


@pytest.mark.parametrize("value", [99, 1_000_000_000, 0, -100, "99", "1000000000"])
def test_vmid_out_of_range_is_refused_naming_the_range(value):
    with pytest.raises(InputError, match="100 to 999999999"):
        validate.vmid(value)


@pytest.mark.parametrize("value", [True, False])
def test_vmid_refuses_bool(value):
    with pytest.raises(InputError, match="found (True|False)"):
        validate.vmid(value)


@pytest.mark.parametrize("value", ["0100", "00100"])
def test_vmid_refuses_leading_zero_so_each_vmid_has_one_spelling(value):
    with pytest.raises(InputError, match="no leading zero"):
        validate.vmid(value)


@pytest.mark.parametrize(
    "value", [" 100", "100 ", "100\n", "+100", "-100", "1e3", "0x64", "１００", "", 100.0, None, b"100"]
)
def test_vmid_refuses_anything_but_plain_digits(value):
    with pytest.raises(InputError, match="VMID must be"):
        validate.vmid(value)


def test_vm_uuid_is_normalised_to_lowercase():
    assert validate.vm_uuid("0F0E0D0C-0B0A-4909-8807-0605040302AB") == "0f0e0d0c-0b0a-4909-8807-0605040302ab"


def test_vm_uuid_lowercase_is_kept():
    value = "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b"
    assert validate.vm_uuid(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "6b9f2c1e3a4d4e5f8a7b1c2d3e4f5a6b",
        "{6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b}",
        "urn:uuid:6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b",
        "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6",
        "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6bb",
        "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6g",
        "6b9f2c1e-3a4d-4e5f-8a7b1-c2d3e4f5a6b",
        "6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b\n",
        " 6b9f2c1e-3a4d-4e5f-8a7b-1c2d3e4f5a6b",
        "",
        None,
        123,
    ],
)
def test_vm_uuid_malformed_is_refused(value):
    with pytest.raises(InputError, match="xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"):
        validate.vm_uuid(value)


@pytest.mark.parametrize("value", ["a", "0", "db.key", "API_token-2", "x" * 128, "a..b", "tmp", "lock", "x.tmpl"])
def test_secret_name_valid(value):
    assert validate.secret_name(value) == value


@pytest.mark.parametrize(
    "value", ["", ".hidden", "-x", "_x", "a/b", "../a", "a b", "a\n", "é", "x" * 129, "a|b", None, 5]
)
def test_secret_name_malformed_is_refused(value):
    with pytest.raises(InputError, match="1 to 128 characters"):
        validate.secret_name(value)


@pytest.mark.parametrize("value", ["x.tmp", "x.lock", "db.key.tmp", "X.TMP", "a.Lock"])
def test_secret_name_reserved_suffix_is_refused(value):
    with pytest.raises(InputError, match=r"must not end in \.tmp or \.lock"):
        validate.secret_name(value)


def test_keyslot_id_valid():
    assert validate.keyslot_id("0123456789abcdef" * 2) == "0123456789abcdef" * 2


@pytest.mark.parametrize("value", ["0123456789ABCDEF" * 2, "a" * 31, "a" * 33, "g" * 32, "", None, 0])
def test_keyslot_id_malformed_is_refused(value):
    with pytest.raises(InputError, match="32 lowercase hex"):
        validate.keyslot_id(value)
