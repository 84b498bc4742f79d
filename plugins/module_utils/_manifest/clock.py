# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one clock of a run: manifest, bundle and receipt times are read from it once, or injected."""

from __future__ import annotations

from datetime import UTC, datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical


def clock(now: str | None) -> datetime:
    """The clock, read once; `now` injects one."""
    if now:
        return canonical.parse_timestamp(now, "now")
    return datetime.now(UTC).replace(microsecond=0)
