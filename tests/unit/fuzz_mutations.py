# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Seeded mutations of valid documents for the fuzz smoke test (stdlib only: it runs under three interpreters).

``Mutator(seed).mutate(sample)`` returns one mutated input and a short description of what was done, so a
failure names the seed, the case and the steps. Byte mutations (bit flips, truncation, splices, repeats,
inserted tokens) reach the JSON and binary readers; tree mutations (type swaps, huge integers, deep nesting,
removed and unknown keys, edited strings, edited base64 payloads) keep the JSON canonical, so they reach the
field checks behind it.
"""

from __future__ import annotations

import base64
import binascii
import json
import random

# Values a field is swapped for: every JSON type, the integer edges, long and odd strings.
HUGE_INTS = (2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**30), 10**4000)
ODD_VALUES = (
    None,
    True,
    False,
    0,
    -1,
    1,
    "",
    "x" * 5000,
    "\u0663",  # ARABIC-INDIC DIGIT THREE: \d matches it, [0-9] does not
    "7\n",
    " 7",
    "\x00",
    "\ud800",  # a lone surrogate: valid in JSON text, not in UTF-8
    "é",
    [],
    {},
    [None],
    {"": None},
)
TOKENS = (
    b'"',
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-0",
    b"1e5",
    b"1.5",
    b"NaN",
    b"Infinity",
    b"9" * 5000,
    b"\xff",
    b"\xc3",
    b"\x00",
    b"\n",
)
STRING_EDITS = ("\u0663", "\u0e53", "\n", " ", "\x00", "+", ",", ":", ";", "=", "A", "z", "0", "9", "/", "-")


def _dumps(doc: object, deep: dict) -> bytes:
    """Canonical JSON bytes of a mutated tree; each placeholder in ``deep`` becomes its deeply nested array.

    Nesting deeper than the interpreter's recursion limit cannot be built as a tree: it is written as text.
    """
    data = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    for placeholder, (depth, inner) in deep.items():
        data = data.replace(json.dumps(placeholder).encode(), b"[" * depth + inner + b"]" * depth)
    return data


def _nested(depth: int, leaf: object) -> object:
    value = leaf
    for index in range(depth):
        value = [value] if index % 2 else {"a": value}
    return value


class Mutator:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    # -------------------------------------------------------------- bytes

    def mutate_bytes(self, data: bytes, others: list[bytes]) -> tuple[bytes, str]:
        rng = self.rng
        buf = bytearray(data)
        steps = []
        for _round in range(rng.choice((1, 1, 1, 2, 3))):
            op = rng.randrange(8)
            pos = rng.randrange(len(buf) + 1)
            if op == 0 and buf:
                pos = min(pos, len(buf) - 1)
                buf[pos] ^= 1 << rng.randrange(8)
                steps.append(f"flip@{pos}")
            elif op == 1:
                del buf[pos:]
                steps.append(f"truncate@{pos}")
            elif op == 2 and buf:
                end = min(len(buf), pos + rng.randrange(1, 64))
                del buf[pos:end]
                steps.append(f"delete@{pos}:{end}")
            elif op == 3:
                token = rng.choice(TOKENS)
                buf[pos:pos] = token
                steps.append(f"insert@{pos}:{token[:8]!r}")
            elif op == 4 and others:
                other = rng.choice(others)
                cut = rng.randrange(len(other) + 1)
                buf[pos:] = other[cut:]
                steps.append(f"splice@{pos}<-{cut}")
            elif op == 5 and buf:
                start = rng.randrange(len(buf))
                chunk = buf[start : start + rng.randrange(1, 128)]
                buf[pos:pos] = chunk
                steps.append(f"repeat@{pos}:{len(chunk)}")
            elif op == 6 and buf:
                pos = min(pos, len(buf) - 1)
                buf[pos] = rng.randrange(256)
                steps.append(f"set@{pos}")
            else:
                buf[pos:pos] = bytes(rng.randrange(256) for _round in range(rng.randrange(1, 16)))
                steps.append(f"random@{pos}")
        return bytes(buf), "bytes " + " ".join(steps)

    # -------------------------------------------------------------- JSON trees

    def _odd(self) -> object:
        # A fresh copy: the tree is edited in place, the constants must not be.
        return json.loads(json.dumps(self.rng.choice(ODD_VALUES)))

    def _paths(self, doc: object, path: tuple = ()) -> list[tuple]:
        found = [path]
        if isinstance(doc, dict):
            for key, value in doc.items():
                found.extend(self._paths(value, (*path, key)))
        elif isinstance(doc, list):
            for index, value in enumerate(doc):
                found.extend(self._paths(value, (*path, index)))
        return found

    @staticmethod
    def _get(doc: object, path: tuple) -> object:
        for step in path:
            doc = doc[step]
        return doc

    def _set(self, doc: object, path: tuple, value: object) -> object:
        if not path:
            return value
        self._get(doc, path[:-1])[path[-1]] = value
        return doc

    def _edit_string(self, text: str) -> str:
        rng = self.rng
        op = rng.randrange(6)
        pos = rng.randrange(len(text) + 1)
        if op == 0:
            return text[:pos] + rng.choice(STRING_EDITS) + text[pos:]
        if op == 1:
            return text[:pos] + text[pos + 1 :]
        if op == 2:
            return text[:pos]
        if op == 3:
            return text.upper() if text != text.upper() else text.lower()
        if op == 4:
            return text + rng.choice(STRING_EDITS)
        return text[:pos] + rng.choice(STRING_EDITS) + text[pos + 1 :]

    def _edit_base64(self, text: str, others: list[bytes]) -> str | None:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None
        if not raw:
            return None
        mutated, _ops = self.mutate_bytes(raw, [])
        return base64.b64encode(mutated).decode("ascii")

    def mutate_tree(self, doc: object, others: list[bytes]) -> tuple[bytes, str]:
        rng = self.rng
        doc = json.loads(json.dumps(doc))
        steps = []
        deep: dict[str, tuple[int, bytes]] = {}
        for _round in range(rng.choice((1, 1, 1, 2, 3))):
            paths = self._paths(doc)
            path = rng.choice(paths)
            value = self._get(doc, path)
            op = rng.randrange(10)
            where = "/".join(str(p) for p in path) or "$"
            if op == 0:
                doc = self._set(doc, path, self._odd())
                steps.append(f"swap {where}")
            elif op == 1:
                doc = self._set(doc, path, rng.choice(HUGE_INTS))
                steps.append(f"huge {where}")
            elif op == 2:
                depth = rng.choice((8, 64, 600, 2500))
                if depth < 100:
                    doc = self._set(doc, path, _nested(depth, value))
                else:
                    placeholder = f"@@deep{len(deep)}@@"
                    deep[placeholder] = (depth, b"1")
                    doc = self._set(doc, path, placeholder)
                steps.append(f"nest{depth} {where}")
            elif op == 3 and path and isinstance(self._get(doc, path[:-1]), dict):
                del self._get(doc, path[:-1])[path[-1]]
                steps.append(f"drop {where}")
            elif op == 4 and isinstance(value, dict):
                value[rng.choice(("zz", "format", "", "a", "version", "\u00e9"))] = self._odd()
                steps.append(f"addkey {where}")
            elif op == 5 and isinstance(value, str):
                edited = self._edit_base64(value, others) if rng.randrange(2) else None
                doc = self._set(doc, path, edited if edited is not None else self._edit_string(value))
                steps.append(f"{'b64' if edited is not None else 'str'} {where}")
            elif op == 6 and isinstance(value, list):
                if value and rng.randrange(2):
                    value.append(json.loads(json.dumps(value[rng.randrange(len(value))])))
                    steps.append(f"dup-item {where}")
                elif value:
                    value.reverse()
                    steps.append(f"reverse {where}")
                else:
                    value.append(self._odd())
                    steps.append(f"add-item {where}")
            elif op == 7 and isinstance(value, int) and not isinstance(value, bool):
                doc = self._set(doc, path, value + rng.choice((-1, 1, -value, 2**32, -(2**32))))
                steps.append(f"int {where}")
            elif op == 8 and len(paths) > 1:
                other = rng.choice(paths[1:])
                doc = self._set(doc, path, json.loads(json.dumps(self._get(doc, other))))
                steps.append(f"copy {'/'.join(str(p) for p in other)} -> {where}")
            else:
                doc = self._set(doc, path, [value, json.loads(json.dumps(value))] if rng.randrange(2) else {"x": value})
                steps.append(f"wrap {where}")
        return _dumps(doc, deep), "tree " + "; ".join(steps)

    # -------------------------------------------------------------- text

    def mutate_text(self, text: str) -> tuple[str, str]:
        rng = self.rng
        for _round in range(rng.choice((1, 2, 3))):
            text = self._edit_string(text)
        if rng.randrange(8) == 0:
            text = text * rng.choice((2, 50))
        return text, "text"

    def mutate(self, sample: bytes | str, others: list) -> tuple[object, str]:
        """One mutation of a sample: text for str samples; bytes or (if JSON) a tree edit for bytes samples."""
        if isinstance(sample, str):
            return self.mutate_text(sample)
        if sample[:1] == b"{" and self.rng.randrange(2):
            return self.mutate_tree(json.loads(sample), others)
        return self.mutate_bytes(sample, others)
