"""The store host's half of an action (plugin_utils/store_host): in process only for this machine reached as this
user, through the module's own argument spec; anywhere else the module runs there. Bad input and refusals are typed
and change nothing; a remote failure keeps the module's message and error type."""

from __future__ import annotations

import dataclasses
import os
import types

import pytest

pytest.importorskip("ansible", reason="action plugins run on the controller (ansible-core, the venv)")

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (  # noqa: E402
    InputError,
    LockError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._store.lock import Holder  # noqa: E402
from ansible_collections.ironclaw.sealed.plugins.plugin_utils import store_host  # noqa: E402

LOCK = "ironclaw.sealed.ironclaw_lock"
MANIFEST = "ironclaw.sealed.ironclaw_manifest"


class FakeAction:
    """What store_host reads of an action: its connection's transport, become, and _execute_module."""

    def __init__(self, transport: str, become: bool = False, module_result: dict | None = None):
        self._connection = types.SimpleNamespace(transport=transport)
        self._play_context = types.SimpleNamespace(become=become)
        self.module_result = module_result or {"changed": False, "from": "module"}
        self.module_calls = []

    def _execute_module(self, module_name, module_args, task_vars):
        self.module_calls.append((module_name, module_args))
        return dict(self.module_result, invocation={"module_args": module_args})


def holder(pid: int | None = None) -> dict:
    return dataclasses.asdict(Holder.of_process(pid or os.getpid(), "test", "host", "user"))


def lock_args(store_dir, **more) -> dict:
    return {"locks": ["vm-100"], "store_dir": str(store_dir), "timeout": 0, "holder": holder(), **more}


def test_local_connection_runs_the_state_in_process(tmp_path):
    action = FakeAction("local")
    (tmp_path / "store").mkdir()
    out = store_host.call(action, LOCK, lock_args(tmp_path / "store"), {})
    assert action.module_calls == []
    assert out["locks"] == ["vm-100"]
    assert os.listdir(tmp_path / "store" / "locks")
    released = store_host.call(action, LOCK, lock_args(tmp_path / "store", state="released"), {})
    assert released["released"] == ["vm-100"]
    assert action.module_calls == []


@pytest.mark.parametrize(("transport", "become"), [("ssh", False), ("paramiko", False), ("local", True)])
def test_another_host_or_another_user_runs_the_module_there(tmp_path, transport, become):
    action = FakeAction(transport, become)
    args = lock_args(tmp_path / "store")
    out = store_host.call(action, LOCK, args, {})
    assert action.module_calls == [(LOCK, args)]
    assert out == {"changed": False, "from": "module"}  # the module's result, its invocation dropped
    assert not (tmp_path / "store").exists()


def test_states_not_listed_for_in_process_run_as_modules(tmp_path):
    action = FakeAction("local")
    args = {"state": "pinned", "state_dir": str(tmp_path / "node"), "trust_roots": []}
    store_host.call(action, MANIFEST, args, {})
    assert action.module_calls == [(MANIFEST, args)]


def test_bad_input_in_process_is_refused_by_the_module_spec_and_creates_nothing(tmp_path):
    action = FakeAction("local")
    with pytest.raises(InputError, match="timeout"):
        store_host.call(action, LOCK, lock_args(tmp_path / "store", timeout="soon"), {})
    with pytest.raises(InputError, match="store_dir"):
        store_host.call(action, LOCK, {"locks": ["vm-100"], "holder": holder()}, {})
    with pytest.raises(InputError, match="state"):
        store_host.call(action, MANIFEST, {"state": "listed"}, {})  # required_if: listed needs store_dir
    assert not (tmp_path / "store").exists()
    assert action.module_calls == []


def test_a_refusal_in_process_keeps_its_type_and_the_other_runs_lock(tmp_path):
    """The in-process path refuses as the module does: a lock another live run holds is not taken."""
    action = FakeAction("local")
    store = tmp_path / "store"
    store.mkdir()
    store_host.call(action, LOCK, lock_args(store), {})
    before = sorted((p.name, p.read_bytes()) for p in (store / "locks").iterdir() if p.is_file())
    other = dict(lock_args(store), holder=holder(os.getppid()))
    with pytest.raises(LockError):
        store_host.call(action, LOCK, other, {})
    assert sorted((p.name, p.read_bytes()) for p in (store / "locks").iterdir() if p.is_file()) == before


def test_a_failed_module_raises_with_its_message_and_error_type(tmp_path):
    action = FakeAction("ssh", module_result={"failed": True, "msg": "the store refused", "error": "RollbackError"})
    with pytest.raises(store_host.StoreCallFailed, match="the store refused") as raised:
        store_host.call(action, LOCK, lock_args(tmp_path / "store"), {})
    assert raised.value.error == "RollbackError"
