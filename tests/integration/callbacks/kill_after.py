"""Test-only callback: kill ansible-playbook (SIGKILL, no clean-up) right after a named task succeeded.

Set IRONCLAW_KILL_AFTER to the task's name (role prefix dropped); the fault-injection tests use it to cut a
migration at a chosen step, as a crash or a lost controller would.
"""

from __future__ import annotations

import os
import signal

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: kill_after
type: aggregate
short_description: kill the run after a named task (tests only)
description: Kills ansible-playbook with SIGKILL right after the task named in IRONCLAW_KILL_AFTER succeeded.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "kill_after"
    CALLBACK_NEEDS_ENABLED = True

    def v2_runner_on_ok(self, result):
        target = os.environ.get("IRONCLAW_KILL_AFTER")
        name = result.task_name or result._task.get_name()
        if target and name.split(" : ", 1)[-1] == target:
            os.kill(os.getpid(), signal.SIGKILL)
