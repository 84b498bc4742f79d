#!/usr/bin/python
# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: ironclaw_provision
short_description: The steps of provisioning a VM, each one controller action and at most one remote host
version_added: 0.1.0
description:
  - Provisioning seals a VM's secrets on its node, proves they unseal, and records the sealed state in the VM's
    next signed manifest. Each O(step) is one task; the action plugin does the controller's part in-process
    (policy keys, approvals, manifest and head signing, secret files read in memory) and talks to one remote
    host, the task's host or its delegate.
  - C(requested) runs on the controller only, first. It checks the node (O(node_name)) and the VM (O(vmid)) or
    VMs (O(vms)), and returns them in the fleet form RV(vms) with the run's locks RV(locks), one per VM and the
    node's, for M(ironclaw.sealed.ironclaw_lock) to take before anything is read on the node.
  - C(identified) runs on the node. It reads the node's TPM facts once and, with O(pve), asks Proxmox for the
    VM, returning the VM's identity (a VM not on this node, or with another uuid or creation time than one
    given, is refused) and the node's facts.
  - C(placed) runs on the store host. It reads the VM's chain from the store (checked against its signed head),
    verifies it on the controller and refuses unless its newest manifest places the VM, active, on this node
    (what a restore from backup may verify here); it returns that manifest as RV(record) for the node's check.
  - C(planned) runs on the store host. It checks the controller's trust root and signing keys, the secrets
    asked for (every O(secrets[].src) a file on the controller) and the policy, reads the VM's chain and the
    node's signed record from the store (the store checked against its signed head), decides by the authority
    rules whether the VM may be provisioned on this node, creates the VM's policy key on first use and signs an
    unseal approval for the node. A refusal changes nothing.
  - C(sealed) runs on the node, in one module run. It seals every secret (the keyslot created on first use,
    only changed secrets re-sealed), test-unseals them all, and describes the sealed state to record.
    O(secrets[].src) files are read on the controller and passed in memory.
  - C(recorded) runs on the store host. It signs the next manifest version when the sealed state changed (or
    the newest nears expiry), online or through the offline signing exchange, stores it (append-only, floor and
    fork checked) and signs the store's next head.
  - C(cached) runs on the node. It verifies the stored manifest against every rule and caches it.
  - C(recorded) and C(cached) also publish a VM's manifest outside provisioning (role C(manifest_store),
    C(tasks_from=publish)), for a statement the node described (M(ironclaw.sealed.ironclaw_manifest) C(built)).
  - In check mode nothing is written; C(recorded) and C(cached) then do nothing (the sealed state they would
    record is not there yet).
  - With O(vms), each step works on a fleet in one task, as the playbook C(ironclaw.sealed.provision) runs it.
    C(requested) takes the VMs (O(vmid), or O(vms) in the forms the migrate playbook takes); C(identified) takes
    its RV(vms) and reads the node's facts and every VM's Proxmox identity in one module run; every later step
    takes the RV(vms) of the step before it. C(sealed) and C(cached) handle every VM in one module run on the
    node (one backend context), each VM under its own locks, every VM sealed with the same O(secrets) and
    O(policy).
options:
  step:
    description: The step to run (see the description).
    type: str
    required: true
    choices: [requested, identified, placed, planned, sealed, recorded, cached]
  vmid:
    description: Proxmox VMID of the VM (C(identified)).
    type: raw
  vm_uuid:
    description:
      - The VM's uuid (C(identified)); required without O(pve), else checked against Proxmox's.
    type: str
    default: ""
  vm_ctime:
    description: The VM's creation time (C(identified)); checked against Proxmox's with O(pve), recorded without.
    type: int
  pve:
    description: With C(identified), ask Proxmox VE on the node for the VM's identity.
    type: bool
    default: false
  vm_nodes:
    description: With C(identified) and O(pve), other Proxmox nodes accepted as the VM's node besides this one.
    type: list
    elements: str
    default: []
  node_name:
    description: The node's inventory name; defaults to the task's C(inventory_hostname).
    type: str
  secrets:
    description:
      - The secrets (C(planned), C(sealed)), each with O(secrets[].name) and one of O(secrets[].src) or
        O(secrets[].content).
    type: list
    elements: dict
    suboptions:
      name:
        description: The secret's name; its blob is C(<state_dir>/<vmid>/<name>.sealed).
        type: str
        required: true
      src:
        description: A file on the controller, read there in memory.
        type: path
      content:
        description: The secret as text (UTF-8).
        type: str
      content_base64:
        description: The secret as base64.
        type: str
  policy:
    description:
      - The keyslot policy, a dict with keys C(migratable) and C(pcrs), or the string
        V(migratable=true;pcrs=sha256:0,7) (C(identified), C(planned), C(sealed), C(recorded)).
    type: raw
  policy_key:
    description: With C(sealed), the VM's policy public key, the RV(plan.policy_key) of C(planned).
    type: str
  approval:
    description: With C(sealed), the unseal approval, the RV(plan.approval) of C(planned).
    type: dict
  identity:
    description: The RV(identity) of C(identified) (every step after it).
    type: dict
  node:
    description: With C(planned), the RV(node) facts of C(identified).
    type: dict
  statement:
    description: With C(recorded), the RV(statement) of C(sealed).
    type: dict
  provision:
    description:
      - With C(recorded), the VM is being provisioned, the new version records O(policy). Every other version
        (a migration, a re-approval) keeps the policy the VM's manifest records.
    type: bool
    default: false
  only_if_here:
    description:
      - With C(recorded), record nothing when the VM's verified chain places it on another node (a re-approval
        after an epoch bump; the VM is being moved away). RV(record) is then null and C(cached) does nothing.
    type: bool
    default: false
  warn_days:
    description: With C(cached), warn when the manifest expires within this many days.
    type: int
    default: 14
  cluster:
    description: The cluster name manifests record.
    type: str
    default: default
  record:
    description:
      - With C(cached), the RV(record) of C(recorded), the stored manifest with the store's signed head, the
        controller's trust roots and the store's floor for the VM.
    type: dict
  vms:
    description:
      - A fleet (see the description). With C(requested), the VMs, a list of VMIDs or of C({vmid, vm_uuid})
        entries, or VMIDs separated by commas; V([]) takes the one VM O(vmid). With every later step, the
        RV(vms) of the step before it.
    type: raw
  now:
    description: The clock (UTC timestamp); the host's clock when omitted. For tests.
    type: str
extends_documentation_fragment:
  - ironclaw.sealed.node
  - ironclaw.sealed.node.attributes
  - ironclaw.sealed.controller
  - ironclaw.sealed.controller.signing
  - ironclaw.sealed.controller.lifetime
  - ironclaw.sealed.store
notes:
  - O(store_dir) is used by C(planned) and C(recorded), on the store host.
  - The playbook C(ironclaw.sealed.provision) runs the steps in order under the VM's lock in the store; the
    role C(ironclaw.sealed.seal) runs C(identified), C(planned) and C(sealed).
  - Give C(sealed) C(no_log) and C(ansible_pipelining=true) so secrets reach the node on stdin only.
author:
  - ironclaw.sealed maintainers (@ironclaw)
"""

EXAMPLES = r"""
- name: Settle the VM's identity and read the node's facts
  ironclaw.sealed.ironclaw_provision:
    step: identified
    vmid: 100
    pve: true
    policy: {migratable: true}
  register: provision_identified

- name: Decide and sign the approval (store host)
  ironclaw.sealed.ironclaw_provision:
    step: planned
    identity: "{{ provision_identified.identity }}"
    node: "{{ provision_identified.node }}"
    store_dir: ~/.local/share/ironclaw/store
    secrets: "{{ ironclaw_secrets }}"
    policy: {migratable: true}
  delegate_to: localhost
  register: provision_plan

- name: Seal and test-unseal
  ironclaw.sealed.ironclaw_provision:
    step: sealed
    identity: "{{ provision_identified.identity }}"
    secrets: "{{ ironclaw_secrets }}"
    policy: {migratable: true}
    policy_key: "{{ provision_plan.plan.policy_key }}"
    approval: "{{ provision_plan.plan.approval }}"
  vars:
    ansible_pipelining: true
  no_log: true
  register: provision_sealed
"""

RETURN = r"""
identity:
  description: The VM's identity.
  returned: when O(step=identified)
  type: dict
  contains:
    vmid:
      description: The VMID.
      type: int
    uuid:
      description: The VM's uuid (Proxmox's with O(pve)).
      type: str
    ctime:
      description: The VM's creation time, when known.
      type: int
    node:
      description: The Proxmox node that holds it (the inventory name without O(pve)).
      type: str
    source:
      description: C(proxmox) or C(variables).
      type: str
    status:
      description: Proxmox's status of the VM, C(unknown) without O(pve).
      type: str
node:
  description: The node's TPM facts (C(srk_name), C(epoch_nv_name), C(epoch), C(pcrs), C(backend)...).
  returned: when O(step=identified)
  type: dict
plan:
  description: What the controller decided.
  returned: when O(step=planned)
  type: dict
  contains:
    policy_key:
      description: The VM's policy public key (base64), null in check mode before it exists.
      type: str
    approval:
      description: The signed unseal approval for this node, absent in check mode before the key exists.
      type: dict
    policy:
      description: The policy the approval follows.
      type: dict
keyslot:
  description: What happened to the keyslot (C(action) is C(created) or C(unchanged)).
  returned: when O(step=sealed)
  type: dict
blobs:
  description: Per secret, its name, generation and action (C(created), C(resealed), C(unchanged)); never content.
  returned: when O(step=sealed)
  type: list
  elements: dict
verified:
  description: The secrets that test-unsealed.
  returned: when O(step=sealed)
  type: list
  elements: str
statement:
  description: The sealed state to record (hashes of the sealed files, never of plaintext); null in check mode.
  returned: when O(step=sealed)
  type: dict
record:
  description: The VM's newest stored manifest and what the node checks it against.
  returned: >-
    when O(step=placed); when O(step=recorded) outside check mode, null when O(only_if_here) and the VM is placed
    elsewhere
  type: dict
  contains:
    envelope:
      description: The stored manifest (DSSE envelope).
      type: dict
    version:
      description: Its version.
      type: int
    head:
      description: The store's signed head.
      type: dict
    trust_roots:
      description: The controller's trust roots.
      type: list
    floor:
      description: The store's floor for the VM before this version.
      type: dict
reason:
  description: Why a new manifest version was (or was not) signed.
  returned: when O(step=recorded) outside check mode
  type: str
manifest:
  description: The cached manifest's C(version), C(expires), C(state) and C(node).
  returned: when O(step=cached) outside check mode
  type: dict
vms:
  description:
    - With O(vms), per VM of the fleet, its C(identity) and what the step returns for it (C(plan), the sealed
      result with its C(statement), C(record), the cached C(manifest)), in the order of the fleet.
  returned: when O(vms) is given, and when O(step=requested)
  type: list
  elements: dict
locks:
  description: The run's locks, C(vm-<VMID>) per VM and C(node-<node>).
  returned: when O(step=requested)
  type: list
  elements: str
"""

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.options import failing_on_errors
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.provision_states import argument_spec, run_step


def main():
    module = argument_spec().create_ansible_module()
    with failing_on_errors(module):
        result = run_step(module)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
