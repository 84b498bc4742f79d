# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The user-facing keyslot policy: a dict or the "migratable=true;pcrs=sha256:0,7" string."""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection

_KEYS = ("migratable", "pcrs")
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


@dataclass(frozen=True)
class PolicySpec:
    migratable: bool = True
    pcrs: PcrSelection | None = None

    def to_dict(self) -> dict:
        return {"migratable": self.migratable, "pcrs": str(self.pcrs) if self.pcrs else None}


def _bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise InputError(f"policy {where}: migratable must be true or false, got {value!r}")


def parse_policy(value) -> PolicySpec:
    """Accept None (defaults), a dict, or the string form; unknown keys are an error."""
    if value is None or value == "" or value == {}:
        return PolicySpec()
    if isinstance(value, str):
        items = {}
        for part in value.split(";"):
            part = part.strip()
            if not part:
                continue
            key, sep, val = part.partition("=")
            key = key.strip()
            if not sep:
                raise InputError(f"policy {value!r}: '{part}' is not key=value (e.g. 'migratable=true;pcrs=sha256:7')")
            if key in items:
                raise InputError(f"policy {value!r}: key '{key}' given twice")
            items[key] = val.strip()
        where = repr(value)
    elif isinstance(value, dict):
        items, where = dict(value), "dict"
    else:
        raise InputError(
            f"policy must be a dict or a string like 'migratable=true;pcrs=sha256:7', got {type(value).__name__}"
        )
    unknown = sorted(set(items) - set(_KEYS))
    if unknown:
        raise InputError(f"policy {where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(_KEYS)}")
    migratable = _bool(items.get("migratable", True), where)
    pcrs = items.get("pcrs")
    return PolicySpec(migratable=migratable, pcrs=PcrSelection.parse(pcrs) if pcrs not in (None, "") else None)
