"""Fixtures of the lab tests: a 3-node lab for the session, and a scratch instance for up/down tests."""

from __future__ import annotations

import pytest
from labrig import SCRATCH_INSTANCE, SESSION_INSTANCE, SESSION_NODES, LabInstance, lab_unavailable


def pytest_collection_modifyitems(config, items):
    reason = lab_unavailable()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("lab"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lab_session():
    """A 3-node lab for the session, down again at its end."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    instance = LabInstance(*SESSION_INSTANCE)
    instance.cli("down")
    instance.cli("up", str(SESSION_NODES))
    try:
        yield instance
    finally:
        instance.cli("down")


@pytest.fixture
def scratch_lab():
    """An instance the test brings up and down itself; down again afterwards whatever happened."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    instance = LabInstance(*SCRATCH_INSTANCE)
    instance.cli("down")
    try:
        yield instance
    finally:
        instance.cli("down", check=False)
