#!/usr/bin/python
# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: ironclaw_manifest
short_description: Signed manifests of a VM's sealed state, the trust root and the manifest store
version_added: 0.1.0
description:
  - A manifest states, for one VM and one version, the SHA-256 and size of its keyslot and of every sealed blob, the
    VM's identity (vmid, uuid, creation time, cluster) and the previous version's digest. It is a DSSE envelope signed
    with Ed25519 keys of the trust root (m-of-n), which never reach a node.
  - C(trusted), C(signed), C(requests) and C(enrolled) run on the controller (or the offline signing machine).
    C(built), C(verified) and C(pinned) run on the node. C(stored) and C(listed) run on the store host and are then
    checked on the controller.
  - The store is checked against its signed head (TUF's snapshot), on the controller, at every C(listed) and before
    every new head; the head must be signed by the key the controller's trust root names for it, must not be older
    than the newest head this controller signed (C(<controller_dir>/store-head.json)), and must list exactly each
    VM's newest manifest and every node record, receipt and trust root in the store. A rolled-back store fails with
    C(RollbackError), a deleted, added or altered file with C(TruncationError), naming the VM or file.
  - Node records are DSSE envelopes signed by the trust root; C(listed) with O(node_name) returns the record only
    after the controller verified it against its own trust root for that node.
  - Verification is fail-closed, in order, each with its own message. Signatures from a threshold of trust-root keys
    (a key counts once), not expired and not issued in the future, version at or above the floor (same version with
    another digest is a fork, a tombstone ends the chain), subject matches the VM, and every file matches exactly with
    none missing or extra. Only then does anything unseal.
options:
  state:
    description:
      - C(trusted) creates the trust root and its signing keys under O(controller_dir) if absent (or rotates it).
      - C(built) describes the VM's sealed state on the node (no secret is read).
      - C(signed) signs the next version when the state described by O(statement) differs from the newest of
        O(chain) or that one expires within O(resign_days). Without O(statement), on the offline machine, signs the
        pending requests of O(sign_dir) the operator confirmed (O(confirm), or O(answer) to a prompt that showed
        O(shown)); nothing else is signed.
      - C(requests) lists the pending offline signing requests in O(sign_dir), every field of each.
      - C(stored) appends O(envelope) to the store (version must be the floor + 1), puts O(trust_roots) there,
        appends O(receipt) and writes O(node_record); then the controller signs the store's next head and has it
        written.
      - C(listed) returns a VM's chain and floor (O(vm_uuid)), the VMs that used O(vmid), and/or the verified node
        record of O(node_name), with the store's head; the trust roots it returns are the controller's own (from
        O(controller_dir)), never the store's copies.
      - C(verified) applies every rule on the node, optionally test-unseals, and caches the envelope and roots;
        with O(head), also checks the store head against the newest this node saw and caches it.
      - C(enrolled) signs the node record of O(node_name) from O(node_facts) and O(attestation) with the trust root
        (or through the offline request exchange) and stores it; an enrolled node whose SRK changed is refused unless
        O(replace).
      - C(pinned) installs O(trust_roots) (the controller's) on the node; the first chain when the node holds
        none, later only the next newer roots.
    type: str
    required: true
    choices: [trusted, built, signed, requests, stored, listed, verified, enrolled, pinned]
  vmid:
    description: Proxmox VMID (C(built), C(verified), C(listed)).
    type: int
  vm_uuid:
    description: The VM's uuid (C(built), C(verified), C(listed)).
    type: str
  cluster:
    description: Cluster name recorded in and checked against manifests.
    type: str
    default: default
  vm_ctime:
    description: The VM's creation time (Proxmox C(meta ctime)); recorded and checked when set.
    type: int
  node_name:
    description:
      - With O(state=built), the node's inventory name recorded in the manifest.
      - With O(state=listed) or O(state=enrolled), the node whose record to read or sign.
    type: str
  node_facts:
    description: With O(state=enrolled), the node's facts (the result of M(ironclaw.sealed.ironclaw_node)).
    type: dict
  attestation:
    description:
      - With O(state=enrolled) on a tpm2 node, the evidence of its attestation proof (the C(record) result of
        M(ironclaw.sealed.ironclaw_attest) with O(ironclaw.sealed.ironclaw_attest#module:enroll=true)), carried in
        the signed node record. Required for tpm2 nodes (their SRK must be the attested one); refused for software
        nodes, which have no TPM.
    type: dict
  replace:
    description: With O(state=enrolled), record a node whose SRK differs from its enrolled one (TPM replaced).
    type: bool
    default: false
  node_record:
    description: With O(state=stored), a signed node record to write (O(state=enrolled) signs and passes it).
    type: dict
  head:
    description:
      - With O(state=stored), a store head the controller signed (the action plugin passes it).
      - With O(state=verified), the store's head (RV(head) of O(state=listed) or O(state=stored)).
    type: dict
  keys:
    description: With O(state=trusted), the number of signing keys of a new (or rotated) trust root.
    type: int
    default: 1
  threshold:
    description: With O(state=trusted), how many of them must sign a manifest.
    type: int
    default: 1
  rotate:
    description: With O(state=trusted), issue the next trust root for new keys, signed by the old and the new keys.
    type: bool
    default: false
  create:
    description: With O(state=trusted), create a trust root when there is none (false, fail instead).
    type: bool
    default: true
  root_expires_days:
    description: Lifetime of a new trust root.
    type: int
    default: 365
  statement:
    description: With O(state=signed), the RV(statement) of O(state=built).
    type: dict
  chain:
    description:
      - With O(state=signed), the VM's chain from the store, oldest first (RV(chain) of O(state=listed)); an empty list
        for a VM never recorded. Verified against the controller's own trust root; the next version extends its newest
        envelope, and is signed only if the VM's ledger allows it (a first version while provisioning, the node the
        ledger places the VM on, or the migration this controller granted last).
    type: list
    elements: dict
  provision:
    description: With O(state=signed), the VM is being provisioned; the new version records O(policy).
    type: bool
    default: false
  policy:
    description:
      - With O(state=signed) and O(provision), the VM's policy to record (C(migratable), C(pcrs)), a dict or the string
        form V(migratable=true;pcrs=sha256:7). Every other version keeps the policy the newest manifest records.
    type: raw
  vm_uuids:
    description: With O(state=listed), list the chains of these VMs (RV(chains)).
    type: list
    elements: str
  allow_pending:
    description:
      - With O(state=signed) and O(signing=offline), return RV(pending) (the request written or still unsigned)
        instead of failing, so that a playbook can request several signatures in one run.
    type: bool
    default: false
  confirm:
    description:
      - With O(state=signed) on the offline machine, the requests to sign, each named by a prefix of its digest
        (SHA-256 of its payload, as C(requests) shows it) of at least 16 hex characters.
      - A prefix that matches no pending request or several, or is too short, fails and nothing is signed.
    type: list
    elements: str
  answer:
    description:
      - With O(state=signed) on the offline machine and no O(confirm), what the operator typed at the prompt;
        C(yes) confirms exactly the digests of O(shown); digest prefixes confirm those requests; empty or
        C(no) confirms nothing (nothing is signed, and the task says so).
    type: str
  shown:
    description: The request digests the prompt showed (RV(requests) of O(state=requests)).
    type: list
    elements: str
  envelope:
    description: A manifest envelope (C(stored), C(verified); C(verified) uses the node's cached one if omitted).
    type: dict
  receipt:
    description: With O(state=stored), a signed destruction receipt to append to the VM's receipts (needs O(vm_uuid)).
    type: dict
  trust_roots:
    description: Trust-root envelopes, oldest first (C(stored), C(verified)).
    type: list
    elements: dict
  floor:
    description: With O(state=verified), the store's floor for the VM (RV(floor) of O(state=listed)).
    type: dict
  unseal:
    description: With O(state=verified), test-unseal every blob in memory after the manifest verified.
    type: bool
    default: true
  cache:
    description: With O(state=verified), keep the verified envelope and trust roots on the node.
    type: bool
    default: true
  warn_days:
    description: With O(state=verified), warn when the manifest expires within this many days.
    type: int
    default: 14
  migration:
    description:
      - With O(state=built), the migration this version records, a dict with C(source) and C(target) (node names)
        and C(not_after) (UTC timestamp). A later version without it does not count as a change.
    type: dict
  now:
    description:
      - The clock as C(YYYY-MM-DDTHH:MM:SSZ), instead of the host's. For tests and for signing at a set date.
      - Verification reads the clock once either way.
    type: str
extends_documentation_fragment:
  - ironclaw.sealed.node
  - ironclaw.sealed.controller
  - ironclaw.sealed.controller.signing
  - ironclaw.sealed.controller.lifetime
  - ironclaw.sealed.store
attributes:
  check_mode:
    description: Can run in check mode; nothing is created, signed for the store, stored or cached.
    support: full
  diff_mode:
    description: Nothing to diff.
    support: none
  idempotent:
    description: An unchanged state makes no new version; storing the same envelope again is a no-op.
    support: full
  action:
    description: Signing states run as an action plugin on the controller.
    support: full
notes:
  - O(state_dir), O(backend) and O(tcti) are used by the node states, the test-unseal of C(verified) among them;
    O(store_dir) by C(stored) and C(listed).
  - With O(state=stored), O(state=listed) and O(state=enrolled), O(controller_dir) defaults to the variable
    C(ironclaw_controller_dir) when it is set.
  - With O(state=trusted) and O(signing=online), this controller's signing keys are also checked to be usable (mode
    0600, enough for the threshold).
author:
  - ironclaw.sealed maintainers (@ironclaw)
"""

EXAMPLES = r"""
- name: Describe VM 100's sealed state on its node
  ironclaw.sealed.ironclaw_manifest:
    state: built
    vmid: 100
    vm_uuid: 6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f
    node_name: "{{ inventory_hostname }}"
  register: built

- name: Verify it against the store's newest manifest, then test-unseal
  ironclaw.sealed.ironclaw_manifest:
    state: verified
    vmid: 100
    vm_uuid: 6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f
    envelope: "{{ chain.latest }}"
    trust_roots: "{{ chain.trust_roots }}"
    floor: "{{ chain.floor }}"
"""

RETURN = r"""
statement:
  description: The VM's sealed state (subject, node, keyslot and blob hashes, sizes and generations, state).
  returned: when O(state=built)
  type: dict
envelope:
  description: The manifest envelope (the previous one when nothing changed).
  returned: when O(state=signed) with O(statement)
  type: dict
version:
  description: The version of the new manifest.
  returned: when O(state=signed) made one
  type: int
pending:
  description: The signing request still waiting for the offline machine (path and digest), or null.
  returned: when O(state=signed) with O(statement), O(signing=offline) and O(allow_pending=true)
  type: dict
signed:
  description: The requests signed on the offline machine, each with C(path), C(digest) and C(summary).
  returned: when O(state=signed) without O(statement)
  type: list
  elements: dict
reason:
  description: Why a new version was (or was not) made.
  returned: when O(state=signed) with O(statement)
  type: str
requests:
  description:
    - Pending signing requests, each with C(path), C(digest) (SHA-256 of the payload), C(kind) (manifest or
      receipt), C(headline) (one line), C(summary) (every field) and C(refused) (why it would not be signed, or null).
  returned: when O(state=requests)
  type: list
  elements: dict
trust_roots:
  description: This controller's trust-root envelopes, oldest first (never the store's copies).
  returned: when O(state=trusted) or O(state=listed)
  type: list
  elements: dict
trust_root:
  description:
    - The current trust root's version, threshold, key ids, store-head key ids and expiry (O(state=trusted)).
    - The version the node now trusts (O(state=pinned)).
  returned: when O(state=trusted) or O(state=pinned)
  type: dict
head:
  description: The store's signed head (after O(state=stored), the new one), or null if the store has none.
  returned: when O(state=listed) or O(state=stored) (not in check mode)
  type: dict
view:
  description: What the store holds as a head lists it (C(vms) newest version and digest, C(files) digests).
  returned: when O(state=listed) or O(state=stored) (not in check mode)
  type: dict
touched:
  description: What this call wrote or found already stored (C(vm:<uuid>) or a file path in the store).
  returned: when O(state=stored) stored something (not in check mode)
  type: list
  elements: str
node:
  description:
    - The node record once verified against the controller's trust root (node, backend, srk_name, srk_public,
      epoch_nv_index, epoch_nv_name, enrolled_at), or null when the node is not enrolled.
  returned: when O(state=listed) with O(node_name), or O(state=enrolled)
  type: dict
node_record:
  description: The node record as stored (not verified; use RV(node)).
  returned: when O(state=listed) with O(node_name)
  type: dict
chain:
  description: Every envelope of the VM's chain in the store, oldest first (what O(state=signed) and the controller's
    approvals and grants decide from).
  returned: when O(state=listed) with O(vm_uuid)
  type: list
  elements: dict
chains:
  description: The chains of O(vm_uuids), by uuid.
  returned: when O(state=listed) with O(vm_uuids)
  type: dict
floors:
  description: The store's floor record of each of O(vm_uuids), by uuid (null where there is none).
  returned: when O(state=listed) with O(vm_uuids)
  type: dict

latest:
  description: The VM's newest envelope in the store, or null.
  returned: when O(state=listed) with O(vm_uuid)
  type: dict
floor:
  description: The VM's floor, C(version), C(digest) and C(destroyed), or null.
  returned: when O(state=listed) with O(vm_uuid)
  type: dict
vms:
  description: With O(vmid), each VM that used the VMID, with C(vm_uuid) and C(history).
  returned: when O(state=listed) with O(vmid) and without O(vm_uuid)
  type: list
  elements: dict
tombstone_statement:
  description: The statement that ends the VM's chain (state destroyed), or null when it has ended.
  returned: when O(state=listed) with O(vm_uuid)
  type: dict
receipts:
  description: The VM's destruction receipts, oldest first.
  returned: when O(state=listed) with O(vm_uuid)
  type: list
  elements: dict
history:
  description:
    Every stored version of the VM, oldest first (version, issued_at, expires, state, node, blob count, policy).
  returned: when O(state=listed) with O(vm_uuid)
  type: list
  elements: dict
manifest:
  description: The verified manifest's version, expiry, state and node.
  returned: when O(state=verified)
  type: dict
blobs:
  description: Per blob, C(name), C(ok), C(generation) and C(size) from the test-unseal.
  returned: when O(state=verified) and O(unseal=true)
  type: list
  elements: dict
"""

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.manifest_states import argument_spec, run_state
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.options import failing_on_errors


def main():
    module = argument_spec().create_ansible_module()
    with failing_on_errors(module):
        result = run_state(module)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
