#!/usr/bin/python
# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: ironclaw_destroy
short_description: Destroy a VM's sealed state for good, on its nodes and on the controller
version_added: 0.1.0
description:
  - O(state=absent) runs on a node. It bumps the node's epoch, then removes the VM's keyslot, blobs, approval and
    cached manifest (unlink and fsync of the directory, symlinks refused). The bump revokes every approval ever signed
    for the node (tpm2) or rewraps the other keyslots under a new KEK and erases the old one (software), so backup
    copies of the VM's files cannot be unsealed. Files are removed only once the bump is durable; a run cut in
    between leaves revoked files and no record, and the re-run finishes it. Returns the other VMs on the node, which
    need a new approval.
  - Another VM's keyslot that is stale or corrupt never blocks the revocation. It is reported in RV(unusable), left
    out of RV(survivors) and left as it is (with the software backend it stays wrapped under the erased KEK).
  - O(state=planned) runs on the controller. It picks the VM to destroy among those the store knows under O(vmid)
    (O(found)), the only one or the O(vm_uuid) given, and refuses an unknown VM, a reused VMID without a uuid, or a
    uuid the store does not know under that VMID; it returns RV(vm_uuid).
  - O(state=revoked) runs on the controller. It destroys the VM's policy key and leaves a tombstone, so no approval
    or migration grant can ever be signed for the VM again.
  - O(state=receipted) runs on the controller. It signs a destruction receipt (DSSE, trust-root keys) saying what
    was destroyed where, how, and which locations could not be reached; only when this run adds to the newest
    receipt already issued. With O(signing=offline) the receipt goes through the same request exchange as
    manifests (O(sign_dir)); the request is written, and the receipts the offline machine signed since are
    returned for the store.
  - Deleting files is not erasure on SSDs, copy-on-write file systems or Ceph. The guarantee is cryptographic.
options:
  state:
    description: What to do, see the description.
    type: str
    default: absent
    choices: [absent, planned, revoked, receipted]
  vmid:
    description: Proxmox VMID. Required unless O(vms) is given.
    type: int
  vm_uuid:
    description: The VM's uuid. Required unless O(vms) is given.
    type: str
  vms:
    description:
      - With O(state=absent), several VMs instead of O(vmid) and O(vm_uuid), each a dict with C(vmid) and C(vm_uuid).
      - Every VM is checked before anything is removed; then their files are removed and the node's epoch is bumped
        once for all of them (a fleet that migrated away is revoked in one step, and the other VMs here need one new
        approval, not one per VM). Not with O(pve) or O(delete_vm).
    type: list
    elements: dict
  cluster:
    description: With O(state=receipted), the cluster name recorded in the receipt.
    type: str
    default: default
  locations:
    description:
      - With O(state=receipted), one entry per node of the VM's history, C(node), C(status) (C(destroyed),
        C(already-destroyed) or C(unreachable)) and C(evidence) (the RV(evidence) of O(state=absent)).
    type: list
    elements: dict
  policy_key:
    description: With O(state=receipted), the RV(policy_key) result of O(state=revoked).
    type: dict
  chain_end:
    description:
      - With O(state=receipted), the store's newest manifest envelope of the VM
        (RV(ironclaw.sealed.ironclaw_manifest#module:latest)).
      - The receipt names the tombstone that ends the chain by C(version) and C(payload_sha256); offline, before
        the tombstone is signed, from its pending request in O(sign_dir).
    type: dict
  stored_receipts:
    description: With O(state=receipted), the VM's receipts already in the store (to issue a new one only when needed).
    type: list
    elements: dict
  now:
    description: The clock as C(YYYY-MM-DDTHH:MM:SSZ) instead of the host's (tests).
    type: str
  pve:
    description:
      - With O(state=absent) on a Proxmox VE node, look at the VM first (C(qm), C(pvesh)). A VM of this node that
        still runs is refused before anything is destroyed, unless O(stop_vm). A VMID now used by another VM
        (another uuid) is left alone.
    type: bool
    default: false
  stop_vm:
    description: With O(pve), shut the running VM down (then stop it after O(shutdown_timeout) seconds).
    type: bool
    default: false
  shutdown_timeout:
    description: Seconds to wait for a clean shutdown before stopping the VM.
    type: int
    default: 60
  delete_vm:
    description: With O(pve), also delete the VM itself from Proxmox (C(qm destroy)), an explicit opt-in.
    type: bool
    default: false
  found:
    description: With O(state=planned), the VMs the store knows under O(vmid) (the C(vms) result of
      M(ironclaw.sealed.ironclaw_manifest) with C(state=listed) and C(vmid)).
    type: list
    elements: dict
  reapprove:
    description:
      - With O(state=absent), once the VM is destroyed and the epoch bumped, renew (on the controller, in the same
        task) the approvals of the other VMs sealed on the node that the controller's ledger places there, installed
        in one node call; the others stay revoked and are reported. Keys C(node_name) (the node's inventory name)
        and C(chains) (the VMs' chains by uuid, the C(chains) result of M(ironclaw.sealed.ironclaw_manifest) with
        C(state=listed) and C(vm_uuids), read before the run changes anything), and C(node_record) (the node's
        signed record as the store holds it); the approvals bind PCR values only from a quote the node makes under
        a fresh nonce of the controller, verified with the AK of that record.
    type: dict
extends_documentation_fragment:
  - ironclaw.sealed.node
  - ironclaw.sealed.controller
  - ironclaw.sealed.controller.signing
  - ironclaw.sealed.store
attributes:
  check_mode:
    description: Lists exactly what would be destroyed and changes nothing.
    support: full
  diff_mode:
    description: Nothing to diff.
    support: none
  idempotent:
    description: Destroying what is already destroyed changes nothing and is not an error.
    support: full
  action:
    description: O(state=revoked) and O(state=receipted) run as an action plugin on the controller.
    support: full
notes:
  - O(controller_dir) is used by O(state=revoked) and O(state=receipted), O(signing) by O(state=receipted),
    O(store_dir) by O(state=planned) (named in a refusal).
author:
  - ironclaw.sealed maintainers (@ironclaw)
"""

EXAMPLES = r"""
- name: Destroy VM 200's sealed state on this node
  ironclaw.sealed.ironclaw_destroy:
    state: absent
    vmid: 200
    vm_uuid: 0f0e0d0c-0b0a-4909-8807-0605040302ab
  register: destroyed

- name: Revoke three VMs that left this node, under one epoch bump
  ironclaw.sealed.ironclaw_destroy:
    state: absent
    vms:
      - {vmid: 201, vm_uuid: 0f0e0d0c-0b0a-4909-8807-060504030201}
      - {vmid: 202, vm_uuid: 0f0e0d0c-0b0a-4909-8807-060504030202}
      - {vmid: 203, vm_uuid: 0f0e0d0c-0b0a-4909-8807-060504030203}
"""

RETURN = r"""
status:
  description:
    - C(destroyed), C(already-destroyed) or, in check mode, C(would-destroy).
    - With O(vms), C(destroyed) when any of them was.
  returned: when O(state=absent)
  type: str
evidence:
  description: Files removed, keyslot id, epoch before and after, what happened to TPM objects, when.
  returned: when O(state=absent) with O(vmid)
  type: dict
results:
  description: With O(vms), one entry per VM in the given order, C(vmid), C(vm_uuid), C(status) and C(evidence).
  returned: when O(state=absent) with O(vms)
  type: list
  elements: dict
proxmox:
  description: What Proxmox said and did, C(vm) (not on this node, stopped, shut down, stopped) and C(deleted).
  returned: when O(state=absent) and O(pve=true)
  type: dict
survivors:
  description: The other VMs on the node (C(vmid), C(vm_uuid)); they need an approval for the new epoch.
  returned: when O(state=absent)
  type: list
  elements: dict
vm_uuid:
  description: With O(state=planned), the uuid of the VM to destroy.
  returned: when O(state=planned)
  type: str
reapproved:
  description: With O(reapprove), how many VMs were re-approved (C(approved)) and why others were not (C(refused)).
  returned: when O(reapprove) and VMs stay on the node
  type: dict
rewrapped:
  description:
    - With O(reapprove) on the software backend, the statements of the re-approved VMs whose keyslots the epoch bump
      rewrapped (their sealed state changed; record them again).
  returned: when O(reapprove) and VMs stay on the node
  type: list
  elements: dict
rewrapped_vms:
  description:
    - The VMs of RV(rewrapped), each as C({identity, statement}), the form the steps C(recorded) and C(cached) of
      M(ironclaw.sealed.ironclaw_provision) take in O(ironclaw.sealed.ironclaw_provision#module:vms) (one task
      each for all of them).
  returned: when O(reapprove) and VMs stay on the node
  type: list
  elements: dict
unusable:
  description:
    - Keyslots of other VMs on the node that cannot serve any VM, each C(path) and C(reason). A keyslot.json or
      approval.json that does not parse, or a software keyslot wrapped under an erased KEK (a stale copy put back
      from a backup) or that does not unwrap. They are not rewrapped and not re-approved.
  returned: when O(state=absent)
  type: list
  elements: dict
policy_key:
  description: The destroyed policy key's C(key_name) (when it still existed) and C(destroyed_at).
  returned: when O(state=revoked)
  type: dict
receipts:
  description: Signed receipt envelopes to store, oldest first (a new one online; offline, those signed since).
  returned: when O(state=receipted)
  type: list
  elements: dict
pending:
  description:
    - With O(signing=offline), the signing requests (C(path), C(digest)) that wait for the offline machine,
      the tombstone's included; the task's message then says what to do.
  returned: when O(state=receipted)
  type: list
  elements: dict
needed:
  description: Whether this run adds to the newest receipt already issued (and so gets a receipt of its own).
  returned: when O(state=receipted)
  type: bool
document:
  description: This run's receipt content.
  returned: when O(state=receipted)
  type: dict
"""

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.destroy_states import argument_spec, destroy_node
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.options import failing_on_errors
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.proxmox import proxmox_cli


def main():
    module = argument_spec().create_ansible_module()
    with failing_on_errors(module):
        cli = proxmox_cli(module) if module.params["pve"] and module.params["state"] == "absent" else None
        result = destroy_node(module.params, module.check_mode, cli)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
