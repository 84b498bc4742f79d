#!/usr/bin/python
# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: ironclaw_policy
short_description: Per-VM policy keys and signed unseal approvals, on the controller
version_added: 0.1.0
description:
  - Runs on the controller only (an action plugin); private keys never reach a node.
  - Each VM has an ECDSA P-256 policy key under O(controller_dir)C(/policy-keys/) (0600). A keyslot's TPM object can
    only be used under a policy that key signed, with policyRef C(ironclaw:vm:<vm_uuid>).
  - O(state=approved) signs an unseal approval for one VM on one node at one epoch, optionally at PCR values;
    PolicyCommandCode(Unseal), PolicySecret(node SRK), PolicyNV(epoch == e) and optionally PolicyPCR.
    Bumping the node's epoch revokes it; a new PCR approval after a firmware update needs no re-seal.
  - O(state=granted) signs a duplication grant, PolicyDuplicationSelect(target SRK name) and PolicyNV(source
    epoch == e), so the VM's keyslot may be duplicated from the source node at its current epoch to exactly one
    target node. Bumping the source's epoch revokes an unused grant. A decommissioned VM gets no grant.
  - The controller signs only what the VM's signed ledger allows (the rules in C(module_utils/_authority/rules.py)).
    O(chain) is the VM's chain from the store; every envelope is verified against the controller's own trust root
    (C(<controller_dir>/trust)), never the store's. An approval is signed only when the VM has no chain yet and is
    being provisioned on O(node_name) (O(provision)), when its newest manifest places it on O(node_name), or for the
    migration to O(node_name) that this controller granted last, from where the ledger places the VM, unexpired.
    A keyslot found on a node is never a reason to approve it. The approval binds the PCR selection the manifest
    records (or, when provisioning, the one O(policy) states).
  - A grant is signed only from the node the ledger places the VM on, for a VM recorded migratable, within a
    migration window of at most 7 days (O(not_after)); the controller records the granted move under
    O(controller_dir)C(/migrations/).
  - O(state=placed) sorts a node's surviving VMs after an epoch bump; only those the ledger places on the node are
    returned in RV(placed) (to be re-approved); the others in RV(refused), with the reason.
  - Refusals name their kind in RV(error) (C(PlacementError), C(RecordedPolicyError), C(DecommissionedError),
    C(ExpiredError), C(LifetimeError), ...) and change nothing.
options:
  state:
    description:
      - C(present) makes sure the VM has a policy key and returns its public part.
      - C(approved) does the same and signs an unseal approval.
      - C(granted) does the same and signs a duplication grant from O(node) to O(target).
      - C(placed) signs nothing; it returns which of O(vms) the ledger places on O(node_name).
    type: str
    default: present
    choices: [present, approved, granted, placed]
  vmid:
    description: Proxmox VMID of the VM. Required unless O(state=placed).
    type: int
  vm_uuid:
    description: The VM's uuid. Required unless O(state=placed).
    type: str
  node_name:
    description:
      - The inventory name of O(node) (the node to approve, or the source of a grant), as manifests record it.
      - Required with O(state=approved), O(state=granted) and O(state=placed).
    type: str
  chain:
    description:
      - The VM's chain from the store, oldest first (RV(ironclaw.sealed.ironclaw_manifest#module:chain) of its
        C(listed) state); an empty list for a VM never recorded. Required with O(state=approved) and O(state=granted).
    type: list
    elements: dict
  chains:
    description: With O(state=placed), each VM's chain by uuid (the C(chains) result of C(listed) with C(vm_uuids)).
    type: dict
  vms:
    description: With O(state=placed), the node's surviving VMs, C(vmid) and C(vm_uuid) each.
    type: list
    elements: dict
  provision:
    description:
      - The approval is for provisioning the VM on O(node_name) with O(policy). Only then may O(policy) be given to an
        approval; every other approval follows the recorded policy.
    type: bool
    default: false
  target_name:
    description: With O(state=granted), the target's inventory name.
    type: str
  not_after:
    description:
      - With O(state=granted), when the migration must be finished (UTC, C(YYYY-MM-DDTHH:MM:SSZ)); at most 7 days ahead.
    type: str
  now:
    description: The clock to decide with (UTC timestamp); for tests. Default the controller's clock.
    type: str
  node:
    description:
      - With O(state=approved), the node to approve, the result of M(ironclaw.sealed.ironclaw_node) or an enrolled node
        record, its C(srk_name), C(epoch_nv_name) and C(epoch) are used.
      - With O(state=granted), the source node, the same way (its current C(epoch)).
    type: dict
  node_record:
    description:
      - The signed record of O(node_name) as the store holds it
        (RV(ironclaw.sealed.ironclaw_manifest#module:node_record) of C(listed) with C(node_name)). Its signature is
        checked against the controller's own trust root and the SRK of O(node) must be the one it enrolled.
      - Required when O(provision) is true (a VM the ledger does not know yet is approved only on an enrolled node);
        checked whenever given.
    type: raw
  target:
    description:
      - With O(state=granted), the target's signed record as the store holds it (the C(node_record) result of
        C(listed) with C(node_name)). The controller verifies it against its own trust root and the name
        O(target_name) inside it; the grant binds the SRK it enrolled, never a value a node or the store host offers.
      - The target must use the same backend as the source.
    type: raw
  epoch:
    description: Approve this epoch instead of the node's current one.
    type: int
  policy:
    description:
      - The keyslot policy, a dict such as C(migratable=true) and C(pcrs=sha256:7), or the string
        V(migratable=true;pcrs=sha256:7), checked with the same rules as on the node and returned normalized
        as RV(policy).
      - With O(state=approved), only together with O(provision); the policy it states is recorded in the VM's
        manifest, and O(pcrs) must bind exactly its selection.
    type: raw
  pcrs:
    description:
      - Bind the approval to PCR values, the C(pcrs) result of M(ironclaw.sealed.ironclaw_node) (C(selection) and
        C(digest)). Reading them from the node trusts the node at signing time; pass expected values to avoid that.
    type: dict
extends_documentation_fragment:
  - ironclaw.sealed.controller
attributes:
  check_mode:
    description: Can run in check mode; a missing key is reported, not created.
    support: full
  diff_mode:
    description: Nothing to diff.
    support: none
  idempotent:
    description: Creates the key once; signing changes nothing.
    support: full
  action:
    description: Runs as an action plugin on the controller.
    support: full
author:
  - ironclaw.sealed maintainers (@ironclaw)
"""

EXAMPLES = r"""
- name: Sign an unseal approval for VM 100 on this node
  ironclaw.sealed.ironclaw_policy:
    state: approved
    vmid: 100
    vm_uuid: 6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f
    node: "{{ node }}"
    node_name: "{{ inventory_hostname }}"
    chain: "{{ listed.chain }}"
  register: approval

- name: Allow VM 100 to move from pve1 to pve2
  ironclaw.sealed.ironclaw_policy:
    state: granted
    vmid: 100
    vm_uuid: 6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f
    node: "{{ source_facts }}"
    node_name: pve1
    chain: "{{ listed.chain }}"
    target: "{{ target_listing.node_record }}"
    target_name: pve2
    not_after: "2030-06-01T13:00:00Z"
  register: grant
"""

RETURN = r"""
policy_key:
  description: Base64 TPM2B_PUBLIC of the VM's policy key (null in check mode when it does not exist yet).
  returned: always
  type: str
key_name:
  description: Hex TPM name of the policy key.
  returned: always
  type: str
policy:
  description: The normalized policy, C(migratable) and C(pcrs) (null when none).
  returned: always
  type: dict
  sample: {migratable: true, pcrs: "sha256:7"}
approval:
  description: The signed approval, to pass to M(ironclaw.sealed.ironclaw_seal).
  returned: when O(state=approved)
  type: dict
grant:
  description: The signed duplication grant, to pass to M(ironclaw.sealed.ironclaw_seal) O(state=exported).
  returned: when O(state=granted)
  type: dict
migration:
  description: The move the controller recorded with the grant (source, target, manifest version and digest, not_after).
  returned: when O(state=granted)
  type: dict
placed:
  description: The VMs the ledger places on O(node_name), C(vmid), C(vm_uuid) and the recorded C(pcrs) selection.
  returned: when O(state=placed)
  type: list
  elements: dict
refused:
  description: The other VMs of O(vms), C(vmid), C(vm_uuid) and C(reason).
  returned: when O(state=placed)
  type: list
  elements: dict
error:
  description: The kind of refusal, e.g. C(PlacementError).
  returned: on failure
  type: str
"""
