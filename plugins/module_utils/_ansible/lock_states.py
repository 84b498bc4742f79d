# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_lock's option set and its store-host side (the action plugin says who the holder is)."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.argspec import ArgumentSpec, store_spec
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._store import lock


def argument_spec() -> ArgumentSpec:
    """ironclaw_lock's options (the module and its action plugin)."""
    return store_spec(required=True).update_argspec(
        state={"type": "str", "default": "acquired", "choices": ["acquired", "released"]},
        locks={"type": "list", "elements": "str", "required": True},
        timeout={"type": "int", "default": lock.DEFAULT_TIMEOUT},
        lease={"type": "int", "default": lock.DEFAULT_LEASE},
        break_lock={"type": "str"},
        playbook={"type": "str"},
        holder={"type": "dict"},
    )


def lock_state(p: dict, check_mode: bool) -> dict:
    """Acquire or release `locks` for the holder the action plugin described."""
    if p["holder"] is None:
        raise InputError(
            "holder is set by the action plugin, which runs on the controller; call the module by its full name "
            "ironclaw.sealed.ironclaw_lock"
        )
    me = lock.Holder.from_dict(p["holder"])
    if p["timeout"] < 0 or p["lease"] < 60:
        raise InputError(f"timeout must be 0 or more and lease at least 60 seconds, found {p['timeout']}, {p['lease']}")
    locks = lock.LockDir(p["store_dir"])
    result = {"run_id": me.run_id, "locks": sorted(set(p["locks"])), "store_dir": p["store_dir"]}
    if p["state"] == "released":
        done = locks.release(p["locks"], me, check_mode)
        result.update(done, changed=bool(done["released"]))
        return result
    break_run = None if p["break_lock"] in (None, "") else lock.run_id(p["break_lock"])
    plan = locks.acquire(p["locks"], me, p["timeout"], p["lease"], break_run, check_mode)
    result.update(
        changed=bool(plan["acquired"] or plan["taken_over"] or plan["broken"]),
        acquired=plan["acquired"],
        renewed=plan["renewed"],
        taken_over=[record.describe() for record in plan["taken_over"]],
        broken=[record.describe() for record in plan["broken"]],
        held_by=[record.describe() for record in plan["blocked"]],
        waited=plan["waited"],
    )
    return result
