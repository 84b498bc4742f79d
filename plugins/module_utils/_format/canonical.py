# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Canonical JSON and the strict field codecs shared by every on-disk format.

Canonical JSON: UTF-8, keys sorted, separators "," and ":", no whitespace,
non-ASCII characters written as themselves, no floats. A document is accepted
only if re-serializing what was parsed gives back the very same bytes, so a
document has exactly one byte form and its hash identifies it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError

_REFUSE_FIX = "re-create it with this collection or restore an intact copy"
_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "integer", bool: "boolean", type(None): "null"}
_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_TIMESTAMP = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")
TPM_NAME_LEN = 34
_TPM_NAME_ALG_SHA256 = b"\x00\x0b"


def show(value: object, limit: int = 60) -> str:
    """A short repr of a value from a document, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_tree(obj: object, path: str) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise FormatError(f"canonical JSON: key {show(key)} at {path} is not a string")
            _check_tree(value, f"{path}.{key}")
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            _check_tree(value, f"{path}[{index}]")
    elif obj is not None and not isinstance(obj, (str, int)):
        # bool is an int subclass and allowed; float, bytes and the rest are not.
        raise FormatError(f"canonical JSON: {type(obj).__name__} at {path} is not allowed (floats never are)")


def dumps(obj: object) -> bytes:
    """Serialize to canonical JSON bytes."""
    _check_tree(obj, "$")
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
            "utf-8"
        )
    except UnicodeEncodeError:
        raise FormatError("canonical JSON: a string holds a lone surrogate, which UTF-8 cannot encode") from None


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise FormatError(f"duplicate key {show(key)}")
        result[key] = value
    return result


def _reject_float(text: str) -> object:
    raise FormatError("a number is not an integer (floats are not allowed)")


def _reject_constant(text: str) -> object:
    raise FormatError(f"{text} is not allowed")


def loads(data: bytes, what: str) -> dict:
    """Parse canonical JSON bytes holding one object; anything else raises FormatError."""
    if not isinstance(data, (bytes, bytearray)):
        raise FormatError(f"{what}: expected bytes, found {type(data).__name__}")
    data = bytes(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FormatError(f"{what}: not valid UTF-8 at byte {err.start}; {_REFUSE_FIX}") from None
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_float=_reject_float,
            parse_constant=_reject_constant,
        )
    except FormatError as err:
        raise FormatError(f"{what}: {err}; {_REFUSE_FIX}") from None
    except (ValueError, RecursionError) as err:
        # JSONDecodeError is a ValueError; so is an integer with too many digits.
        raise FormatError(f"{what}: not valid JSON ({err.__class__.__name__}: {err}); {_REFUSE_FIX}") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{what}: expected a JSON object, found {_type_name(doc)}; {_REFUSE_FIX}")
    try:
        again = dumps(doc)
    except FormatError as err:
        raise FormatError(f"{what}: {err}; {_REFUSE_FIX}") from None
    except RecursionError:
        raise FormatError(f"{what}: JSON is nested too deeply; {_REFUSE_FIX}") from None
    if again != data:
        offset = next(
            (i for i, (a, b) in enumerate(zip(again, data, strict=False)) if a != b), min(len(again), len(data))
        )
        raise FormatError(
            f"{what}: JSON is not canonical (expected sorted keys, no whitespace, minimal escapes, "
            f"no trailing bytes; first difference at byte {offset}); {_REFUSE_FIX}"
        )
    return doc


def _type_name(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _is_a(value: object, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        # bool is an int subclass in Python, but not in JSON.
        return bool in types
    return isinstance(value, types)


def require_fields(doc: object, required: dict[str, type | tuple[type, ...]], what: str, prefix: str = "") -> None:
    """Require exactly the keys of ``required``, each of the given JSON type(s).

    ``prefix`` names a nested object in messages ("policy." gives "policy.key_name").
    """
    if not isinstance(doc, dict):
        where = f"field '{prefix[:-1]}'" if prefix else "document"
        raise FormatError(f"{what}: {where} must be a JSON object, found {_type_name(doc)}; {_REFUSE_FIX}")
    odd_keys = [key for key in doc if not isinstance(key, str)]
    if odd_keys:
        raise FormatError(f"{what}: field name {show(odd_keys[0])} is not a string; {_REFUSE_FIX}")
    missing = [key for key in required if key not in doc]
    if missing:
        names = ", ".join(f"'{prefix}{key}'" for key in sorted(missing))
        raise FormatError(f"{what}: missing required field(s) {names}; {_REFUSE_FIX}")
    unknown = [key for key in doc if key not in required]
    if unknown:
        names = ", ".join(show(prefix + key) for key in sorted(unknown))
        raise FormatError(
            f"{what}: unknown field(s) {names}; "
            "upgrade ironclaw.sealed if a newer version wrote it, otherwise the file was altered"
        )
    for key, types in required.items():
        types = types if isinstance(types, tuple) else (types,)
        if not _is_a(doc[key], types):
            expected = " or ".join(_JSON_TYPE_NAMES.get(t, t.__name__) for t in types)
            raise FormatError(
                f"{what}: field '{prefix}{key}' must be {expected}, found {_type_name(doc[key])}; {_REFUSE_FIX}"
            )


def require_format(doc: dict, expected: str, what: str) -> None:
    """Check the ``format`` field first, so a newer version gets its own clear error."""
    found = doc.get("format")
    if found != expected:
        if "format" not in doc:
            detail = "no 'format' field"
        elif isinstance(found, str):
            detail = f"version {show(found)}"
        else:
            detail = f"{_type_name(found)} instead of a version string"
        raise FormatError(
            f"{what}: unknown format, expected '{expected}', found {detail}; "
            "if a newer ironclaw.sealed wrote it, upgrade the collection on this node"
        )


def checked(check: Callable[[object], object], value: object, what: str, field: str) -> object:
    """Run a validator from _common.validate on a document field; require the canonical spelling."""
    try:
        result = check(value)
    except InputError as err:
        raise FormatError(f"{what}: field '{field}': {err}") from None
    if result != value:
        raise FormatError(f"{what}: field '{field}' must be written as {show(result)}, found {show(value)}")
    return result


def int_field(value: int, what: str, field: str, minimum: int, maximum: int) -> int:
    """Require an integer (already type-checked) within [minimum, maximum]."""
    if not minimum <= value <= maximum:
        raise FormatError(f"{what}: field '{field}' must be from {minimum} to {maximum}, found {value}")
    return value


def b64encode(data: bytes) -> str:
    """Standard base64 alphabet, with padding."""
    return base64.b64encode(data).decode("ascii")


def _length_note(length: int | None) -> str:
    return "" if length is None else f" of exactly {length} bytes"


def b64decode(text: object, what: str, length: int | None = None) -> bytes:
    """Strict base64: standard alphabet, padded, no whitespace, canonical padding bits."""
    expected = f"base64 (standard alphabet, padded){_length_note(length)}"
    if not isinstance(text, str):
        raise FormatError(f"{what}: expected {expected}, found {_type_name(text)}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{what}: expected {expected}, found malformed base64; {_REFUSE_FIX}") from None
    if b64encode(data) != text:
        raise FormatError(f"{what}: expected {expected}, found a non-canonical encoding; {_REFUSE_FIX}")
    if length is not None and len(data) != length:
        raise FormatError(f"{what}: expected {expected}, found {len(data)} bytes; {_REFUSE_FIX}")
    return data


def hex_bytes(text: object, what: str, length: int | None = None) -> bytes:
    """Strict lowercase hex with an even number of digits."""
    expected = f"lowercase hex{_length_note(length)}"
    if not isinstance(text, str):
        raise FormatError(f"{what}: expected {expected}, found {_type_name(text)}")
    if not _HEX.fullmatch(text):
        # The value is not shown: this codec may be used for key material.
        raise FormatError(
            f"{what}: expected {expected}, found {len(text)} characters that are not pairs of lowercase hex digits; "
            f"{_REFUSE_FIX}"
        )
    data = bytes.fromhex(text)
    if length is not None and len(data) != length:
        raise FormatError(f"{what}: expected {expected}, found {len(data)} bytes; {_REFUSE_FIX}")
    return data


def tpm_name(text: object, what: str) -> bytes:
    """A TPM object name in hex: 0x000b (TPM_ALG_SHA256) followed by a SHA-256 digest, 34 bytes."""
    data = hex_bytes(text, what, TPM_NAME_LEN)
    if data[:2] != _TPM_NAME_ALG_SHA256:
        raise FormatError(
            f"{what}: expected a TPM name starting with 000b (SHA-256), found prefix {data[:2].hex()}; {_REFUSE_FIX}"
        )
    return data


def utc_timestamp(dt: datetime | None = None) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC (seconds precision); now if no datetime is given."""
    if dt is None:
        dt = datetime.now(UTC)
    elif dt.tzinfo is None or dt.utcoffset() is None:
        raise InputError("timestamp: expected a timezone-aware datetime, found a naive one; attach a timezone")
    dt = dt.astimezone(UTC)
    return f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}Z"


def parse_timestamp(text: object, what: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SSZ`` strictly; returns an aware UTC datetime."""
    expected = "a UTC timestamp YYYY-MM-DDTHH:MM:SSZ"
    if not isinstance(text, str):
        raise FormatError(f"{what}: expected {expected}, found {_type_name(text)}")
    match = _TIMESTAMP.fullmatch(text)
    if not match:
        raise FormatError(f"{what}: expected {expected}, found {show(text)}")
    try:
        return datetime(*(int(part) for part in match.groups()), tzinfo=UTC)
    except ValueError:
        raise FormatError(f"{what}: expected {expected}, found an impossible date or time {show(text)}") from None


def timestamp_field(value: str, what: str, field: str) -> str:
    """Check a timestamp field of a document and return it as written."""
    parse_timestamp(value, f"{what}: field '{field}'")
    return value
