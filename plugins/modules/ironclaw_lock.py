#!/usr/bin/python
# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: ironclaw_lock
short_description: Serialize the playbook runs that change a VM, with locks in the manifest store
version_added: 0.1.0
description:
  - Takes or releases run locks in the manifest store, C(<store_dir>/locks/<name>.json), so that every controller
    working against one store (several admins, AWX) sees them. Run it on the store host (C(delegate_to)).
  - The playbooks that change a VM (provision, migrate, decommission) take C(vm-<VMID>) for each VM of the run, and
    C(node-<host>) for each node whose epoch they may bump (the source of a migration, the nodes of a
    decommissioned VM's history). verify takes none.
  - O(locks) are taken all at once or not at all. When one is held by another run, the module waits up to
    O(timeout) seconds, then fails naming the holder (playbook, controller host, user, pid, since when, run id)
    and takes none of them.
  - The holder is the C(ansible-playbook) run, not the task. Every task of one run has the same run id, so the
    release can be in any later play; taking a lock this run already holds renews its lease.
  - A lock whose holder is provably dead is taken over without asking, that is a lock taken by a controller
    process that is gone, on the machine the module runs on (same boot, same pid namespace; the store host is
    the controller). Any other stale lock (taken on another controller, held for a store on another host, or
    whose lease expired without renewal) is only reported. After checking that its run is dead, break it with
    O(break_lock).
options:
  state:
    description:
      - C(acquired) takes every lock of O(locks) for this run, or none.
      - C(released) removes the locks of O(locks) that this run holds and leaves any other run's lock alone.
    type: str
    default: acquired
    choices: [acquired, released]
  locks:
    description:
      - Lock names, C(vm-<VMID>) or C(node-<inventory host>). Order does not matter, and duplicates count once.
    type: list
    elements: str
    required: true
  store_dir:
    description:
      - The manifest store on the host the module runs on (C(ironclaw_store_dir) on C(ironclaw_store_host)). It must
        exist. The locks go to its C(locks/) subdirectory.
    type: path
    required: true
  timeout:
    description:
      - Seconds to wait for locks held by other runs (C(ironclaw_lock_timeout)). C(0) fails at once.
    type: int
    default: 300
  lease:
    description:
      - Seconds after which a lock that its run did not renew is reported as probably dead. The lock is only
        reported then, never taken over.
    type: int
    default: 3600
  break_lock:
    description:
      - Run id of a dead run whose locks are in the way (C(ironclaw_break_lock)). Only that run's locks among
        O(locks) are removed, and only when all of O(locks) can then be taken.
    type: str
  playbook:
    description:
      - What this run is, recorded in the lock and shown to a run that waits for it. Defaults to the play's name.
    type: str
  holder:
    description:
      - The holder record of this run. The action plugin sets it on the controller, so do not set it.
    type: dict
attributes:
  check_mode:
    description: Takes no lock, waits for none, and reports what it would take and who holds the rest.
    support: full
  diff_mode:
    description: Nothing to show beyond the result.
    support: none
  idempotent:
    description: Taking a lock the run holds only renews its lease, and releasing a lock the run does not hold
      changes nothing.
    support: full
  action:
    description: The action plugin describes the run on the controller.
    support: full
notes:
  - Locks are advisory and only bind runs that take them. The collection's playbooks take them in their first
    play and release them in their last one, or in C(rescue) and C(always) sections, so that a failed run
    releases its locks too.
  - A run killed on another controller leaves its locks until they are broken with O(break_lock). The
    error that names them gives the command.
seealso:
  - module: ironclaw.sealed.ironclaw_manifest
author:
  - ironclaw.sealed maintainers (@ironclaw)
"""

EXAMPLES = r"""
- name: Take the locks of the VMs this run changes, and of the source node
  ironclaw.sealed.ironclaw_lock:
    locks: [vm-200, vm-201, node-pve1]
    store_dir: "{{ ironclaw_store_dir }}"
    timeout: "{{ ironclaw_lock_timeout }}"
    break_lock: "{{ ironclaw_break_lock | default(omit) }}"
    playbook: migrate
  delegate_to: "{{ ironclaw_store_host }}"
  run_once: true

- name: Release them (in an always section)
  ironclaw.sealed.ironclaw_lock:
    state: released
    locks: [vm-200, vm-201, node-pve1]
    store_dir: "{{ ironclaw_store_dir }}"
  delegate_to: "{{ ironclaw_store_host }}"
  run_once: true
"""

RETURN = r"""
run_id:
  description: This run's id. Another run names it to break the locks of this run if it died.
  returned: always
  type: str
  sample: 3f9c0a6d1e2b4c58
locks:
  description: The lock names, sorted, each once.
  returned: always
  type: list
  elements: str
  sample: [node-pve1, vm-200]
store_dir:
  description: The store directory given, as the module found it on the host it ran on.
  returned: always
  type: str
  sample: /root/.local/share/ironclaw/store
store_host:
  description: The host the module ran on (the C(delegate_to) host), where a later task releases the locks.
  returned: always
  type: str
  sample: localhost
acquired:
  description: Locks this call took (in check mode, would take).
  returned: when O(state=acquired)
  type: list
  elements: str
  sample: [node-pve1, vm-200]
renewed:
  description: Locks this run already held. Their lease was renewed.
  returned: when O(state=acquired)
  type: list
  elements: str
  sample: []
taken_over:
  description: Locks of provably dead runs that this call took over, each with its former holder.
  returned: when O(state=acquired)
  type: list
  elements: str
  sample: ["vm-200: held by run 0c1d2e3f4a5b6c7d (migrate, root@ctl1, pid 4242) since 2026-01-02T03:04:05Z"]
broken:
  description: Locks of the O(break_lock) run that this call broke, each with its former holder.
  returned: when O(state=acquired)
  type: list
  elements: str
  sample: []
held_by:
  description: In check mode, the locks other runs hold now (a real run would wait for them).
  returned: when O(state=acquired)
  type: list
  elements: str
  sample: []
waited:
  description: Seconds this call waited for other runs.
  returned: when O(state=acquired)
  type: int
  sample: 0
released:
  description: Locks of this run that this call removed (in check mode, would remove).
  returned: when O(state=released)
  type: list
  elements: str
  sample: [node-pve1, vm-200]
not_held:
  description: Locks of O(locks) this run did not hold (free, or another run's), left as they were.
  returned: when O(state=released)
  type: list
  elements: str
  sample: []
"""

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.lock_states import argument_spec, lock_state
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.options import failing_on_errors


def main():
    module = argument_spec().create_ansible_module()
    with failing_on_errors(module):
        result = lock_state(module.params, module.check_mode)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
