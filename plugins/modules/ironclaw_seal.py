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

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.manifest_states import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.options import (
    failing_on_errors,
    node_options,
    vm_locks,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.proxmox import proxmox_cli, stopped_for_migration
from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.approval import approval_from_dict
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.grant import grant_from_dict
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.bundle_check import verify_bundle
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.node_check import as_envelopes
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.verify import parse_ref
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.spec import parse_policy
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal import engine, transfer
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir

SECRET_OPTIONS = {
    "name": {"type": "str", "required": True},
    "src": {"type": "path"},
    "content": {"type": "str", "no_log": True},
    "content_base64": {"type": "str", "no_log": True},
}


def _migration(doc) -> dict:
    if not isinstance(doc, dict) or sorted(doc) != ["not_after", "source", "target"]:
        raise InputError("state=exported needs migration: {source, target, not_after}")
    canonical.parse_timestamp(doc["not_after"], "migration.not_after")
    for field in ("source", "target"):
        validate.node_name(doc[field])
    if doc["source"] == doc["target"]:
        raise InputError(f"migration source and target are both '{doc['source']}': a VM cannot migrate to its own node")
    return doc


def _manifest_ref(doc) -> dict:
    ref = parse_ref({"destroyed": False, **(doc or {})}, "manifest")
    return {"version": ref.version, "digest": ref.digest}


def _stopper(module, vm):
    def prepare():
        return stopped_for_migration(
            proxmox_cli(module),
            vm.vmid,
            vm.vm_uuid,
            stop=module.params["stop_vm"],
            timeout=module.params["shutdown_timeout"],
            check_mode=module.check_mode,
        )

    return prepare


def transfer_state(module, backend, vm, approval) -> dict:
    p = module.params
    path = p["bundle"] or transfer.bundle_path(p["state_dir"], vm.vmid, vm.vm_uuid)
    now = clock(p["now"])
    if p["state"] == "exported":
        if p["grant"] is None:
            raise InputError("state=exported needs grant (ironclaw_policy state=granted)")
        if p["manifest"] is None:
            raise InputError("state=exported needs manifest: {version, digest} of the store's newest manifest")
        return transfer.export_vm(
            backend,
            vm,
            grant_from_dict(p["grant"], "grant"),
            migration=_migration(p["migration"]),
            manifest=_manifest_ref(p["manifest"]),
            path=path,
            now=now,
            check_mode=module.check_mode,
            prepare=_stopper(module, vm) if p["pve"] else None,
        )
    if approval is None:
        raise InputError("state=imported needs approval: one signed for this node (ironclaw_policy state=approved)")
    verify = None
    if p["envelope"] is not None:
        envelope = dsse.parse_envelope(p["envelope"], "manifest")
        roots = as_envelopes(p["trust_roots"], "trust root")
        floor = parse_ref(p["floor"], "floor") if p["floor"] else None

        def verify(bundle):
            verify_bundle(
                p["state_dir"],
                bundle,
                envelope=envelope,
                offered_roots=roots,
                floor=floor,
                cluster=p["cluster"],
                vm_ctime=p["vm_ctime"],
                now=now,
            )

    return transfer.import_vm(backend, vm, approval, path=path, now=now, check_mode=module.check_mode, verify=verify)


def run(module) -> dict:
    p = module.params
    vm = VmDir(p["state_dir"], p["vmid"], p["vm_uuid"])
    approval = approval_from_dict(p["approval"], "approval") if p["approval"] is not None else None
    state = p["state"]
    if state == "sealed" and not p["secrets"]:
        raise InputError("state=sealed needs secrets: a list of {name, src | content | content_base64}")
    if state == "unsealed" and not p["dest"]:
        raise InputError("state=unsealed needs dest: the directory that receives the secrets")
    if state == "approved" and approval is None:
        raise InputError("state=approved needs approval (from ironclaw_policy)")
    policy = parse_policy(p["policy"])
    secrets = engine.load_secrets(p["secrets"]) if state == "sealed" else None
    key = canonical.b64decode(p["policy_key"], "policy_key") if p["policy_key"] else None
    with (
        open_backend(p["backend"], tcti=p["tcti"], state_dir=p["state_dir"]) as backend,
        vm_locks(p, module.check_mode),
    ):
        if state == "sealed":
            if key is None and vm.keyslot(required=False) is None and module.check_mode:
                names = [s.name for s in secrets]
                return {
                    "changed": True,
                    "keyslot": {"action": "created"},
                    "blobs": [{"name": n, "action": "created"} for n in names],
                }
            return engine.seal(
                backend,
                vm,
                secrets,
                migratable=policy.migratable,
                pcrs=policy.pcrs,
                policy_key_public=key,
                approval=approval,
                check_mode=module.check_mode,
            )
        if state in ("exported", "imported"):
            return transfer_state(module, backend, vm, approval)
        if state == "approved":
            return engine.install_approval(backend, vm, approval, check_mode=module.check_mode)
        if state == "unsealed":
            return engine.unseal_to(
                backend,
                vm,
                p["dest"],
                names=p["names"],
                approval=approval,
                check_mode=module.check_mode,
                cluster=p["cluster"],
                vm_ctime=p["vm_ctime"],
                now=clock(p["now"]),
            )
        result = engine.verify(backend, vm, approval)
        result = {"changed": False, "blobs": result["blobs"], "failed_blobs": result["failed"]}
        if result["failed_blobs"]:
            details = "; ".join(b["error"] for b in result["blobs"] if not b["ok"])
            module.fail_json(
                msg=f"VM {vm.vmid}: {len(result['failed_blobs'])} blob(s) did not verify: {details}", **result
            )
        if not result["blobs"]:
            module.fail_json(msg=f"VM {vm.vmid} has a keyslot but no sealed secrets to verify", **result)
        return result


def main():
    spec = node_options()
    spec.update(
        state={
            "type": "str",
            "required": True,
            "choices": ["sealed", "unsealed", "verified", "approved", "exported", "imported"],
        },
        # The list itself is not secret (names, paths); its content fields are no_log.
        secrets={"type": "list", "elements": "dict", "options": SECRET_OPTIONS, "no_log": False},
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
    module = AnsibleModule(
        argument_spec=spec,
        required_if=[
            ("state", "sealed", ("secrets",)),
            ("state", "unsealed", ("dest",)),
            ("state", "approved", ("approval",)),
            ("state", "exported", ("grant", "manifest", "migration")),
            ("state", "imported", ("approval",)),
        ],
        supports_check_mode=True,
    )
    with failing_on_errors(module):
        result = run(module)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
