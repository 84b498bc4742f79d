# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module side's edge: collection errors become fail_json here, in one place."""

from __future__ import annotations

import contextlib

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import IronclawError
from ansible_collections.ironclaw.sealed.plugins.module_utils._crypto import lib as crypto_lib


@contextlib.contextmanager
def failing_on_errors(module):
    """The one place where collection errors become fail_json (messages never hold secret bytes)."""
    if crypto_lib.missing():
        module.fail_json(msg=crypto_lib.missing())
    try:
        yield
    except IronclawError as exc:
        # A refusal may carry what was found (e.g. the blobs that did not verify): never secret bytes.
        module.fail_json(msg=str(exc), error=type(exc).__name__, **getattr(exc, "details", {}))
