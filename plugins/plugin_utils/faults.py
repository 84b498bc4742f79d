# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fault points at the Python boundaries of the playbooks' steps, for the kill-and-re-run tests.

A step calls ``reached("migration.exported")`` (and so on) once what it names is done. When the
environment variable ``IRONCLAW_FAULT_AT`` names that point, the run dies there: ansible-playbook and
the worker that runs the step are killed with SIGKILL, no clean-up, as a crash or a lost controller
would. Unset (always, outside the tests), a fault point does nothing. The points are part of the
tests' contract: they name what was done, not a task, so renaming a task moves no test.
"""

from __future__ import annotations

import os
import signal

ENV = "IRONCLAW_FAULT_AT"


def reached(point: str) -> None:
    """Die here when the tests asked for it (the worker's parent is ansible-playbook)."""
    if os.environ.get(ENV) == point:
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
