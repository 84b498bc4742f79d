# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Regressions of the parser bugs the fuzz smoke (test_fuzz_parsers.py) found: each input once crashed a parser
with an exception outside the collection's hierarchy; now it is refused with a typed error that says why."""

from __future__ import annotations

import json

import pytest
from test_fuzz_parsers import _grant

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import FormatError, InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical, grant
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.spec import parse_policy


def _edited(data: bytes, **changes) -> bytes:
    doc = json.loads(data)
    doc.update(changes)
    return canonical.dumps(doc)


@pytest.mark.parametrize("fmt", [["ironclaw-grant/2"], {"x": "ironclaw-grant/2"}], ids=["list", "object"])
def test_unhashable_grant_format_is_a_format_error(fmt):
    doc = canonical.loads(_edited(_grant(), format=fmt), "grant")
    with pytest.raises(FormatError, match="grant: unknown format, expected 'ironclaw-grant/2'"):
        grant.grant_from_dict(doc, "grant")


@pytest.mark.parametrize(
    "text",
    ["sha256:\u0663", "sha256:0,\u0667", "sha256:7\n", "sha1:0+sha256:7\n"],
    ids=["arabic-indic-digit", "second-index-other-script", "trailing-newline", "newline-after-second-bank"],
)
def test_pcr_selection_with_digits_of_another_script_or_a_newline_is_refused(text):
    # Was: \d matched U+0663 (read as PCR 3) and $ let a final newline through.
    with pytest.raises(InputError, match="is not of the form 'sha256:0,7'"):
        PcrSelection.parse(text)
    with pytest.raises(InputError):
        parse_policy({"pcrs": text})
