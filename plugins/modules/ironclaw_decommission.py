#!/usr/bin/python
# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: ironclaw_decommission
short_description: The controller's steps of a decommission, each one task on the store host
version_added: 0.1.0
description:
  - The decommission playbook (and the destroy role's C(plan), C(preflight) and C(finish) entry points) are calls of
    this action, one per step, delegated to the store host. Each step decides on the controller through the
    collection's rules; store calls run in process when the store host is the controller itself.
  - C(planned) settles the VM (the only one the store knows under O(vmid), or O(vm_uuid) among them) and the nodes
    of its history, read from its chain as the controller verifies it, with the run's store locks.
  - C(checked) stops the run, with nothing destroyed, when a reachable node's check (M(ironclaw.sealed.ironclaw_destroy)
    O(ironclaw.sealed.ironclaw_destroy#module:state=absent) in check mode, registered by each node as
    C(__destroy_probe)) refused, naming each node and its reason; an unreachable node is only listed. It then reads
    the chains of the other VMs on those nodes, for their re-approval after the epoch bumps.
  - C(finished) destroys the VM's policy key, ends its manifest chain with a signed tombstone, signs and stores the
    destruction receipt (one location per node of the history, from each node's registered
    C(__destroy_node_result); a node that did not answer is C(unreachable)), and returns a one-line summary. It fails,
    after doing all of that, while a node is unreachable or a signature waits for the offline machine; the re-run
    finishes.
  - Runs on the controller only (an action); the module file holds its documentation.
options:
  step:
    description: The step to run (see the description).
    type: str
    required: true
    choices: [planned, checked, finished]
  vmid:
    description: With O(step=planned), the VMID of the VM to decommission.
    type: int
  vm_uuid:
    description: With O(step=planned), the VM's uuid, needed when its VMID was used by more than one VM.
    type: str
  store_dir:
    description: With O(step=planned), the store directory on the host the task is delegated to.
    type: path
  controller_dir:
    description: With O(step=planned), the controller's directory (keys, trust root, policy keys).
    type: path
    default: ~/.local/share/ironclaw
  lock_timeout:
    description: Seconds to wait for the controller's store-head lock.
    type: float
    default: 120
  run:
    description: With O(step=checked) and O(step=finished), what the previous step returned (RV(run)).
    type: dict
  cluster:
    description: With O(step=finished), the cluster name the receipt names.
    type: str
    default: default
  signing:
    description: With O(step=finished), C(online) (keys on the controller) or C(offline) (signing requests).
    type: str
    default: online
    choices: [online, offline]
  sign_dir:
    description: With O(step=finished) and O(signing=offline), where signing requests are exchanged.
    type: path
  expires_days:
    description: With O(step=finished), the tombstone's lifetime in days.
    type: int
    default: 90
  max_days:
    description: With O(step=finished), the longest lifetime signed.
    type: int
    default: 90
  now:
    description: The time to decide at (tests); defaults to the controller's clock.
    type: str
attributes:
  check_mode:
    description: C(planned) and C(checked) change nothing; C(finished) reports what it would destroy and signs nothing.
    support: full
  diff_mode:
    description: No diff.
    support: none
  idempotent:
    description: A re-run after a finished decommission destroys nothing again and issues no new receipt.
    support: full
author:
  - ironclaw.sealed maintainers (@ironclaw)
"""

EXAMPLES = r"""
- name: Find VM 100 and the nodes of its history
  ironclaw.sealed.ironclaw_decommission:
    step: planned
    vmid: 100
    store_dir: ~/.local/share/ironclaw/store
  register: decommission
"""

RETURN = r"""
run:
  description:
    - What the next step takes - C(vmid), C(vm_uuid), C(nodes) (the verified history's nodes), C(unknown_nodes) (those
      not in the inventory), C(locks), C(store_dir), C(controller_dir), C(chain), C(tombstone_statement), C(report);
      after O(step=checked) also C(survivor_chains).
  returned: when O(step=planned) or O(step=checked)
  type: dict
summary:
  description: One line on what the decommission did on each node, to the policy key, the chain and the receipt.
  returned: when O(step=finished)
  type: str
locations:
  description: The receipt's locations, one per node of the history (C(node), C(status), C(evidence)).
  returned: when O(step=finished)
  type: list
  elements: dict
pending:
  description: Signing requests waiting for the offline machine (C(path), C(digest)).
  returned: when O(step=finished)
  type: list
  elements: dict
error:
  description: The kind of refusal, e.g. C(RefusedError) or C(IncompleteError).
  returned: on failure
  type: str
"""
