#!/usr/bin/python
# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: ironclaw_seal
short_description: Seal, unseal and verify a VM's secrets on a node
version_added: 0.1.0
description:
  - Each VM has one keyslot, a random 32-byte VM root key (VRK) sealed in the node's TPM (or wrapped under the software
    backend's node KEK), and one blob per secret, AES-256-GCM under a key derived from the VRK.
  - TPM work is per VM, never per secret, sealing N secrets costs one TPM2_Create and unsealing one policy session.
  - Unsealing needs an approval signed by the VM's policy key on the controller (M(ironclaw.sealed.ironclaw_policy)),
    bound to this node's SRK and epoch, optionally to PCR values.
  - Plaintext and hashes of it are never returned or logged.
options:
  state:
    description:
      - C(sealed) creates the keyslot if absent and makes each listed secret's blob hold exactly its content.
        Secrets not listed are left alone. An unchanged secret is not rewritten (compared by decrypting, in constant
        time); a changed one is re-sealed with generation + 1.
      - C(unsealed) writes each secret to C(dest/<name>), mode 0600, where the content differs. First the VM's
        sealed state is verified against the signed manifest this node cached (when the VM was provisioned,
        verified or migrated here), its trust roots and its floor record (signatures, expiry, rollback, fork and
        tombstone, subject (O(cluster), O(vm_ctime)), every file's SHA-256 and size, the exact set). A blob older
        than the manifest's generation (put back from a backup) is refused as a rollback. Nothing is written to
        O(dest) unless all of it holds; a VM without a cached manifest is refused (run the verify playbook).
      - C(verified) test-unseals every blob in memory and fails, naming the blobs, when any does not verify.
      - C(approved) checks an approval against the keyslot and node and installs it as C(approval.json).
      - C(exported) (on the source of a migration) re-binds the keyslot to the target named by O(grant) and writes
        a transfer bundle to O(bundle) with the unchanged blobs. With C(tpm2) this is TPM2_Duplicate to the target's
        SRK, the VRK never appears in the clear; with C(software) the VRK is wrapped to the target's X25519
        enrollment key. The source's own files are not changed. An intact, unexpired bundle for the same target
        and manifest is kept.
      - C(imported) (on the target) checks the bundle at O(bundle) (against O(envelope) when given), re-binds the
        keyslot under this node (TPM2_Import), test-unseals every blob in memory with O(approval), and only then
        writes blobs, approval and, last, the keyslot. Only when the keyslot holds the bundle's key bound to this
        node and every blob is the bundle's, byte for byte and the set exact, is the state already here; then it
        only proves it still unseals. Other files of the VM here (a stale copy put back from a backup) are replaced
        from the bundle when it is verified against O(envelope), and refused, nothing changed, without it; a
        keyslot here without a bundle is refused. The bundle is kept (it names the migration to record); remove it
        once the manifest is stored.
    type: str
    required: true
    choices: [sealed, unsealed, verified, approved, exported, imported]
  secrets:
    description:
      - With O(state=sealed), the secrets. Give exactly one of O(secrets[].src), O(secrets[].content),
        O(secrets[].content_base64).
    type: list
    elements: dict
    suboptions:
      name:
        description: Secret name, C([A-Za-z0-9][A-Za-z0-9._-]{0,127}); the blob is C(<state_dir>/<vmid>/<name>.sealed).
        type: str
        required: true
      src:
        description: A file on the node to read the secret from.
        type: path
      content:
        description: The secret as text (UTF-8).
        type: str
      content_base64:
        description: The secret as base64, for binary secrets.
        type: str
  policy:
    description:
      - The keyslot policy, a dict with keys C(migratable) and C(pcrs), or the string
        V(migratable=true;pcrs=sha256:0,7).
      - C(migratable=false) keyslots can never leave this TPM. It is fixed when the keyslot is created.
      - C(pcrs) requires the approval to bind those PCRs.
    type: raw
  policy_key:
    description:
      - The VM's policy public key (base64 TPM2B_PUBLIC, from M(ironclaw.sealed.ironclaw_policy)). Needed to create the
        keyslot; later it must match the keyslot's key.
    type: str
  approval:
    description:
      - An unseal approval from M(ironclaw.sealed.ironclaw_policy), its
        RV(ironclaw.sealed.ironclaw_policy#module:approval) dict.
      - With O(state=sealed) or O(state=approved) it is installed; otherwise the installed C(approval.json) is used.
    type: dict
  dest:
    description: With O(state=unsealed), the directory (created 0700 if missing) that receives C(<name>) files.
    type: path
  names:
    description: With O(state=unsealed), only these secrets.
    type: list
    elements: str
  grant:
    description:
      - With O(state=exported), the duplication grant from M(ironclaw.sealed.ironclaw_policy) (O(state=granted)),
        its RV(ironclaw.sealed.ironclaw_policy#module:grant) dict. It names this node at its current epoch and
        exactly one target.
    type: dict
  migration:
    description:
      - With O(state=exported), what the next manifest will record, a dict with C(source) and C(target) (node
        names) and C(not_after) (UTC timestamp after which the target refuses the bundle).
    type: dict
  manifest:
    description:
      - With O(state=exported), the store's newest manifest the export is based on, a dict with C(version) and
        C(digest), the RV(ironclaw.sealed.ironclaw_manifest#module:floor) that module reports for the VM.
    type: dict
  bundle:
    description:
      - With O(state=exported) or O(state=imported), the transfer bundle file.
      - Defaults to C(<state_dir>/transfer/<vmid>-<vm_uuid>.bundle.json).
    type: path
  envelope:
    description:
      - With O(state=imported), the signed manifest the bundle was exported from (the store's newest). The
        manifest rules are applied to it against this node's trust roots and floor, and the bundle's blobs must
        match its SHA-256 list.
    type: dict
  trust_roots:
    description: With O(envelope), the store's trust roots (the node's cached ones may only move forward).
    type: list
    elements: dict
  floor:
    description: With O(envelope), the store's floor for the VM.
    type: dict
  cluster:
    description: With O(envelope) or O(state=unsealed), the cluster name the manifest must name.
    type: str
    default: default
  vm_ctime:
    description: With O(envelope) or O(state=unsealed), the VM's creation time from Proxmox, when known.
    type: int
  pve:
    description:
      - With O(state=exported), ask Proxmox VE on this node about the VM first, it must be this VM (same uuid) and not
        running; a running VM is shut down (then stopped) with O(stop_vm), otherwise nothing changes.
    type: bool
    default: false
  stop_vm:
    description: With O(pve), shut a running VM down (then stop it after O(shutdown_timeout)) before exporting.
    type: bool
    default: true
  shutdown_timeout:
    description: Seconds to wait for a clean shutdown before the VM is stopped.
    type: int
    default: 60
  now:
    description: The clock (UTC timestamp) for bundle and manifest times; the host's clock when omitted. For tests.
    type: str
extends_documentation_fragment:
  - ironclaw.sealed.node
  - ironclaw.sealed.node.vm
  - ironclaw.sealed.node.attributes
notes:
  - Two runs on the same VM are serialized by a lock under O(state_dir).
  - Pass secrets with O(secrets[].content) from a C(no_log) task, or as files in a private temporary directory.
author:
  - ironclaw.sealed maintainers (@ironclaw)
"""

EXAMPLES = r"""
- name: Seal two secrets for VM 100
  ironclaw.sealed.ironclaw_seal:
    state: sealed
    vmid: 100
    vm_uuid: 6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f
    policy: migratable=true
    policy_key: "{{ policy.policy_key }}"
    approval: "{{ approval.approval }}"
    secrets:
      - name: master-key
        src: /run/ironclaw-tmp/master-key
      - name: api-token
        content: "{{ vault_api_token }}"
  no_log: true

- name: Check every secret of VM 100 still unseals
  ironclaw.sealed.ironclaw_seal:
    state: verified
    vmid: 100
    vm_uuid: 6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f
"""

RETURN = r"""
keyslot:
  description: The keyslot id and whether it was created.
  returned: when O(state=sealed)
  type: dict
  sample: {keyslot_id: 3f1e0c6d2b8a4f5e9d7c6b5a4f3e2d1c, action: created, migratable: true}
blobs:
  description:
    - With O(state=sealed), per secret its C(name), C(generation) and C(action) (C(created), C(resealed), C(unchanged)).
    - With O(state=verified), per blob its C(name), C(ok), C(generation), C(size) and the C(error) when not ok.
  returned: when O(state=sealed) or O(state=verified)
  type: list
  elements: dict
failed_blobs:
  description: Names of blobs that did not verify.
  returned: when O(state=verified)
  type: list
  elements: str
files:
  description: Per secret its C(name), C(path) and C(action) (C(written) or C(unchanged)).
  returned: when O(state=unsealed)
  type: list
  elements: dict
manifest_version:
  description: The version of the cached manifest the sealed state was verified against before unsealing.
  returned: when O(state=unsealed)
  type: int
epoch:
  description: The epoch of the installed approval.
  returned: when O(state=approved)
  type: int
status:
  description:
    - With O(state=exported), C(exported), C(already-exported) or C(would-export).
    - With O(state=imported), C(imported), C(already-imported) or C(would-import).
  returned: when O(state=exported) or O(state=imported)
  type: str
  sample: exported
path:
  description: The bundle file written.
  returned: when O(state=exported)
  type: str
not_after:
  description: Until when the target accepts the bundle (an existing bundle keeps its own).
  returned: when O(state=exported)
  type: str
vm:
  description: What Proxmox said about the VM before the export (C(stopped), or the shutdown's outcome).
  returned: when O(state=exported) and O(pve=true)
  type: str
migration:
  description: The bundle's migration record (C(source), C(target), C(not_after)).
  returned: when O(state=imported)
  type: dict
replaced:
  description:
    - The VM's files on this node that were not the bundle's (a stale keyslot or blobs, e.g. put back from a backup)
      and that the verified bundle replaced, or would replace in check mode. Empty when the import had already
      finished.
  returned: when O(state=imported)
  type: list
  elements: str
  sample: [master-key.sealed]
keyslot_id:
  description: The keyslot moved.
  returned: when O(state=exported) or O(state=imported)
  type: str
"""

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.argspec import (
    ArgumentSpec,
    node_spec,
    secrets_option,
    vm_spec,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.options import failing_on_errors
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.proxmox import proxmox_cli
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.approved import Approved
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.exported import Exported
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.imported import Imported
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.sealed import Sealed
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.unsealed import Unsealed
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.module_backends.verified import Verified

# Every state runs on the node (module_utils/_seal/module_backends/<state>.py).
STATES = {
    "sealed": Sealed,
    "unsealed": Unsealed,
    "verified": Verified,
    "approved": Approved,
    "exported": Exported,
    "imported": Imported,
}


def argument_spec() -> ArgumentSpec:
    spec = ArgumentSpec(
        required_if=[
            ("state", "sealed", ("secrets",)),
            ("state", "unsealed", ("dest",)),
            ("state", "approved", ("approval",)),
            ("state", "exported", ("grant", "manifest", "migration")),
            ("state", "imported", ("approval",)),
        ],
    )
    return (
        node_spec()
        .merge(vm_spec())
        .merge(spec)
        .update_argspec(
            state={"type": "str", "required": True, "choices": list(STATES)},
            secrets=secrets_option(),
            policy={"type": "raw"},
            policy_key={"type": "str", "no_log": False},  # a public key
            approval={"type": "dict"},
            dest={"type": "path"},
            names={"type": "list", "elements": "str"},
            grant={"type": "dict"},
            migration={"type": "dict"},
            manifest={"type": "dict"},
            bundle={"type": "path"},
            envelope={"type": "dict"},
            trust_roots={"type": "list", "elements": "dict"},
            floor={"type": "dict"},
            cluster={"type": "str", "default": "default"},
            vm_ctime={"type": "int"},
            now={"type": "str"},
            pve={"type": "bool", "default": False},
            stop_vm={"type": "bool", "default": True},
            shutdown_timeout={"type": "int", "default": 60},
        )
    )


def main():
    module = argument_spec().create_ansible_module()
    with failing_on_errors(module):
        state = STATES[module.params["state"]](module.params, module.check_mode, lambda: proxmox_cli(module))
        result = state.run()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
