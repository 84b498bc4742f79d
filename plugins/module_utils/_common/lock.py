# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Advisory locks so that two plays on the same VM (or node) cannot interleave."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import LockError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import ensure_dir

DEFAULT_TIMEOUT = 120.0


@contextlib.contextmanager
def locked(state_dir: str, key: str, timeout: float = DEFAULT_TIMEOUT, shared: bool = False):
    """Hold `<state_dir>/.locks/<key>.lock` (exclusive, or shared with other shared holders); wait up to `timeout` s."""
    lock_dir = os.path.join(state_dir, ".locks")
    ensure_dir(lock_dir)
    path = os.path.join(lock_dir, f"{key}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockError(
                        f"{key} is locked by another ironclaw run on this node ({path}) for more than {timeout:.0f}s; "
                        "wait for it to finish, or raise lock_timeout"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)
