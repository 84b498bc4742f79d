"""Where the benchmark finds the collection, the swtpm rig and the playbook lab of this checkout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
COLLECTIONS = REPO / ".build" / "collections"
OUT = REPO / "bench" / "out"


def link_collection() -> None:
    """Make the checkout importable as ansible_collections.ironclaw.sealed, as tests/conftest.py does.

    The link is made under a private name and renamed into place, so a test run
    starting at the same moment sees either no link or a whole one.
    """
    link = COLLECTIONS / "ansible_collections" / "ironclaw" / "sealed"
    target = os.path.relpath(REPO, link.parent)
    if os.path.islink(link) and os.readlink(link) == target:
        return
    if link.exists() and not link.is_symlink():
        raise RuntimeError(f"{link} should be a symlink to the checkout; remove it and rerun")
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".sealed.{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def setup() -> None:
    """Import paths: the collection, tests/rig (swtpm, command counter), tests/integration (playbook lab)."""
    link_collection()
    for path in (str(TESTS / "integration"), str(TESTS), str(COLLECTIONS)):  # COLLECTIONS ends up first
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    # tss2 writes its own errors to stderr; the benchmark reports failures itself.
    os.environ["TSS2_LOG"] = "all+NONE"
