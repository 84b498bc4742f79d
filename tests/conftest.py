"""Shared pytest setup: import paths for the collection and the rig, TPM fixtures."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
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
    if not SWTPM:
        skip = pytest.mark.skip(reason="swtpm binary not found: install the Debian package swtpm (make bootstrap)")
        for item in items:
            if item.get_closest_marker("swtpm"):
                item.add_marker(skip)
    if _distributed(config):
        _group_for_workers(config, items)


# -- pytest-xdist (make integration runs -n 2 --dist loadgroup) ----------------------------------------
#
# Playbook runs are CPU-bound and one ansible-playbook keeps about one core busy, so on two cores two
# workers halve the wall time. What workers must not split or share:
# - tests/lab: instance names and subnets are fixed (tests/lab/labrig.py, the modules' INSTANCE), and
#   lab_session is a session fixture (one per worker would bring the same instance up twice): the modules that use
#   it or the scratch instance are one unit; every other lab module brings up an instance of its own (its INSTANCE,
#   or make demo's) and is a unit of its own, so two labs may run at once, one per worker;
# - a module- or class-scoped fixture (a lab enrolled once for a module): its tests stay on one worker,
#   or each worker would pay for that setup again;
# everything else (a function-scoped lab in tmp_path, swtpms on random ports) is one unit per test.
# xdist's own xdist_group marks do not hold on pytest 9 (xdist 3.8 renames node ids through an attribute
# pytest 9 no longer reads, so every test became a unit of its own and two workers brought up one lab
# instance at once), so with --dist loadgroup the scheduler below takes its units from this file instead:
# each worker writes the units of what it collected to a file the controller names, the scheduler reads it.
# Units are handed out in collection order, so the longest go first (longest-processing-time first, from
# the durations of the last run in pytest's cache; without a cache, the lab first, then other groups by
# size, then single tests; lab units before the others, they are the longest).

LAB_GROUP = "lab"
# The lab fixtures shared by several modules (tests/lab/conftest.py): the modules that use them are one unit.
SHARED_LAB_FIXTURES = {"lab_session", "scratch_lab"}
DURATIONS_KEY = "ironclaw/unit-durations"
UNITS_INPUT = "ironclaw_units_file"
_UNITS_FILE = pytest.StashKey[Path]()  # on the controller: where workers write their units


def _distributed(config) -> bool:
    """A run on xdist workers: the controller (its --dist) or a worker (xdist sets a worker's --dist to "no")."""
    if not config.pluginmanager.hasplugin("xdist"):
        return False
    return hasattr(config, "workerinput") or config.getoption("dist", "no") != "no"


def _module(item) -> str:
    return item.nodeid.split("::", 1)[0]


def _in_lab(item) -> bool:
    return (TESTS / "lab") in Path(str(item.path)).resolve().parents


def shared_lab_modules(items) -> set[str]:
    """The lab modules that use a lab instance other modules use too (the session's, the scratch one)."""
    return {_module(item) for item in items if _in_lab(item) and SHARED_LAB_FIXTURES & set(item.fixturenames)}


def work_unit(item, shared_lab: set[str] = frozenset()) -> str:
    """The unit of work an item belongs to: what one worker runs as a whole. `shared_lab`: shared_lab_modules()."""
    if _in_lab(item):
        # A lab module with an instance of its own runs whole on one worker, beside the others.
        return LAB_GROUP if _module(item) in shared_lab else _module(item)
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    for name in item.fixturenames:
        defs = fixtureinfo.name2fixturedefs.get(name) if fixtureinfo else None
        if defs and defs[-1].scope in ("module", "class", "package"):
            return _module(item)
    return item.nodeid


def _group_for_workers(config, items) -> None:
    shared_lab = shared_lab_modules(items)
    units = {item.nodeid: work_unit(item, shared_lab) for item in items}
    lab_units = {units[item.nodeid] for item in items if _in_lab(item)}
    for item in items:
        item.user_properties.append(("xdist_unit", units[item.nodeid]))
    cache = getattr(config, "cache", None)
    last = cache.get(DURATIONS_KEY, {}) if cache is not None else {}
    sizes: dict[str, int] = {}
    for unit in units.values():
        sizes[unit] = sizes.get(unit, 0) + 1

    def rank(item):
        unit = units[item.nodeid]
        # Longest first: measured seconds, else the lab's units, then other groups by size, then single tests.
        return (-last.get(unit, 0.0), unit not in lab_units, -sizes[unit])

    items.sort(key=rank)  # stable: collection order within a rank, so a unit's tests stay in their order
    target = getattr(config, "workerinput", {}).get(UNITS_INPUT)
    if target:
        tmp = Path(f"{target}.{os.getpid()}")
        tmp.write_text(json.dumps(units))
        os.replace(tmp, target)


FUZZ_SEED = "IRONCLAW_FUZZ_SEED"


def pytest_configure(config):
    # One fuzz seed for the whole run (tests/unit/test_fuzz_parsers.py), xdist workers included: drawn here, shown in
    # the header, handed to each worker.
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get(FUZZ_SEED):
        os.environ[FUZZ_SEED] = workerinput[FUZZ_SEED]
    elif not os.environ.get(FUZZ_SEED):
        os.environ[FUZZ_SEED] = str(int.from_bytes(os.urandom(4), "big"))
    if _distributed(config) and not hasattr(config, "workerinput") and config.getoption("dist") == "loadgroup":
        handle, name = tempfile.mkstemp(prefix="ironclaw-xdist-units-", suffix=".json")
        os.close(handle)
        config.stash[_UNITS_FILE] = Path(name)


def pytest_unconfigure(config):
    path = config.stash.get(_UNITS_FILE, None)
    if path is not None:
        path.unlink(missing_ok=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    # xdist, on the controller: what each worker gets as config.workerinput.
    node.workerinput[FUZZ_SEED] = os.environ[FUZZ_SEED]
    path = node.config.stash.get(_UNITS_FILE, None)
    if path is not None:
        node.workerinput[UNITS_INPUT] = str(path)


def pytest_terminal_summary(terminalreporter, config):
    # Shown under -q and with xdist (a worker's own output is not): the seed of a run that took the fuzz smoke.
    if any("unit" in str(arg) or "fuzz" in str(arg) for arg in config.args):
        terminalreporter.write_line(f"fuzz smoke seed {os.environ[FUZZ_SEED]} ({FUZZ_SEED}=<seed> repeats its cases)")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    path = config.stash.get(_UNITS_FILE, None)
    if path is None:
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        """xdist's scope scheduling, a scope being a unit of work_unit(), in collection order."""

        _units: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            # Called once every worker has collected, so each has written the file by then.
            if self._units is None:
                self._units = json.loads(path.read_text() or "{}")
            return self._units.get(nodeid, nodeid)

    config.option.loadscopereorder = False  # keep the longest-first order of the collection
    return UnitScheduling(config, log)


_unit_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    # On the controller, reports come in from every worker, with the unit a worker put in user_properties;
    # setup and teardown count too (a module's enrolled lab is paid in its first test's setup).
    unit = dict(report.user_properties).get("xdist_unit")
    if unit is not None:
        _unit_seconds[unit] = _unit_seconds.get(unit, 0.0) + report.duration


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    config = session.config
    cache = getattr(config, "cache", None)
    if hasattr(config, "workerinput") or not _distributed(config) or cache is None or not _unit_seconds:
        return
    last = cache.get(DURATIONS_KEY, {})
    cache.set(DURATIONS_KEY, {**last, **{unit: round(s, 1) for unit, s in _unit_seconds.items()}})


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
