"""Shared pytest setup: import paths for the collection and the rig, TPM fixtures."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path

import pytest

# tss2 writes its own errors to stderr; tests look at our exceptions instead.
os.environ["TSS2_LOG"] = "all+NONE"

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
COLLECTIONS = REPO / ".build" / "collections"


def _link_collection() -> None:
    """Make the checkout importable as ansible_collections.ironclaw.sealed.

    Two pytest runs may start at once (one per interpreter), so the link is
    made under a private name and renamed into place atomically.
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


_link_collection()
for path in (str(TESTS), str(COLLECTIONS)):  # COLLECTIONS ends up first
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)

from rig.counter import TpmCommandCounter  # noqa: E402
from rig.swtpm import Swtpm  # noqa: E402

SWTPM = shutil.which("swtpm")


def pytest_collection_modifyitems(config, items):
    if SWTPM:
        return
    skip = pytest.mark.skip(reason="swtpm binary not found: install the Debian package swtpm (make bootstrap)")
    for item in items:
        if item.get_closest_marker("swtpm"):
            item.add_marker(skip)


def _require_swtpm() -> None:
    # For tests that use a TPM fixture without the marker.
    if not SWTPM:
        pytest.skip("swtpm binary not found: install the Debian package swtpm (make bootstrap)")


@dataclasses.dataclass
class CountedSwtpm:
    """A Swtpm behind a TpmCommandCounter; give ``tcti`` to the code under test."""

    swtpm: Swtpm
    counter: TpmCommandCounter

    @property
    def tcti(self) -> str:
        return self.counter.tcti


@pytest.fixture
def swtpm():
    _require_swtpm()
    with Swtpm() as tpm:
        yield tpm


@pytest.fixture
def swtpm_pair():
    """Two independent TPMs (source and target of a migration)."""
    _require_swtpm()
    with Swtpm() as first, Swtpm() as second:
        yield first, second


@pytest.fixture
def counted_swtpm():
    _require_swtpm()
    with Swtpm() as tpm, TpmCommandCounter(tpm) as counter:
        yield CountedSwtpm(tpm, counter)


@pytest.fixture
def counted_swtpm_pair():
    """Two counted TPMs (source and target of a migration)."""
    _require_swtpm()
    with Swtpm() as first, Swtpm() as second, TpmCommandCounter(first) as c1, TpmCommandCounter(second) as c2:
        yield CountedSwtpm(first, c1), CountedSwtpm(second, c2)


@pytest.fixture(scope="session")
def shared_swtpm():
    """One TPM for the whole session: only for tests that do not change TPM state."""
    _require_swtpm()
    with Swtpm() as tpm:
        yield tpm
