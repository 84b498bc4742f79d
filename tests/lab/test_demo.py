"""`make demo` (scripts/demo), the README's first command: the whole lifecycle on a lab of its own (instance
iclabd), from a clean start to the lab's end. It once broke without any other test noticing (an ad hoc unseal that
did not name the cluster), so it runs here too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT = 600


def test_demo_runs_the_whole_lifecycle():
    env = {**os.environ, "VENV_BIN": str(Path(sys.executable).parent), "NO_COLOR": "1", "ANSIBLE_NOCOLOR": "1"}
    done = subprocess.run(
        [str(REPO / "scripts" / "demo")], capture_output=True, text=True, timeout=DEMO_TIMEOUT, env=env, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for said in (
        "VM 100 migrated: its sealed state is on pve2 (manifest v2)",
        "VM 100 migrated: its sealed state is on pve3 (manifest v3)",
        "manifest v3: node pve3, migrated pve2 -> pve3",
        "== lab down, temporary directory removed",
    ):
        assert said in output, output[-4000:]
