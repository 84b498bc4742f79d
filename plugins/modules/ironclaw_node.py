#!/usr/bin/python
# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: ironclaw_node
short_description: TPM (or software backend) facts of a node, and its one-time provisioning
version_added: 0.1.0
description:
  - Reports what approvals for this node are bound to, the SRK name, the epoch counter and its value,
    optionally PCR values.
  - With O(state=present), provisions the node once, a persistent ECC P-256 SRK at C(0x81000001) and an epoch NV
    counter at C(0x01c10000) (tpm2), or a node KEK and X25519 enrollment key under O(state_dir) (software).
  - Incrementing the epoch revokes every approval signed for the node; that is done by decommission and migration.
  - With O(pve=true) and O(vmid), also reports that VM as Proxmox VE sees it (read-only).
  - With O(state=attested) (tpm2 backend), reports the attestation evidence RV(attestation), the EK certificate
    from NV, the EK public created from its TCG template, the SRK and the attestation key (AK, created under the
    EK and persisted at C(0x81000002) the first time), answers the controller's O(credentials) with
    TPM2_ActivateCredential (RV(activation)) and, given O(nonce), quotes O(pcrs) (RV(quote)). The node decides
    nothing; the controller verifies (docs/attestation.md).
  - With O(state=quoted), only quotes O(pcrs) with the AK and the controller's O(nonce).
  - With O(state=checked), checks the node's health and reports each item in plain words with its fix (RV(checks)),
    without changing anything - the TCTI (device and permissions, or the swtpm port), the TPM vendor and firmware,
    the dictionary-attack lockout, free object slots, the PCR banks of O(pcrs), the SRK and its template, the epoch NV
    index, the library versions, the O(state_dir) owner, mode and free space, and the clock against O(controller_time).
    A failed check does not fail the task; RV(healthy) and RV(problems) say what is wrong (playbook doctor).
options:
  state:
    description:
      - C(gathered) only reads. C(present) provisions what is missing and is a no-op on a provisioned node.
      - C(attested) reports attestation evidence (creating the AK once), answers O(credentials) and quotes
        with O(nonce). C(quoted) quotes O(pcrs) with O(nonce).
      - C(checked) reports the node's health (RV(checks)); it only reads.
    type: str
    default: gathered
    choices: [gathered, present, attested, quoted, checked]
  pcrs:
    description:
      - PCR selection to read, for example C(sha256:0,7); the values and their digest are returned for approvals.
      - Not available with the software backend.
      - With O(state=attested) or O(state=quoted), the PCRs to quote (default C(sha256:0,7)).
      - With O(state=checked), the PCRs whose banks must be allocated (default C(sha256:0,7)).
    type: str
  controller_time:
    description:
      - The controller's clock (Unix time, seconds) when it started the task; with O(state=checked), the node's clock
        is compared with it (more than 300 seconds apart fails the check).
    type: float
  nonce:
    description:
      - Base64 qualifying data for the quote (8 to 64 bytes), drawn fresh by the controller.
      - Required with O(state=quoted); with O(state=attested), a quote is made only when it is set.
    type: str
  credentials:
    description:
      - Credentials the controller made (TPM2_MakeCredential) for this node's EK and the SRK or AK name, each
        answered with TPM2_ActivateCredential. Only with O(state=attested).
    type: dict
    suboptions:
      srk:
        description: Credential bound to the SRK's name.
        type: dict
        suboptions:
          id_object:
            description: Base64 marshaled TPM2B_ID_OBJECT.
            type: str
            required: true
          encrypted_secret:
            description: Base64 marshaled TPM2B_ENCRYPTED_SECRET.
            type: str
            required: true
      ak:
        description: Credential bound to the AK's name.
        type: dict
        suboptions:
          id_object:
            description: Base64 marshaled TPM2B_ID_OBJECT.
            type: str
            required: true
          encrypted_secret:
            description: Base64 marshaled TPM2B_ENCRYPTED_SECRET.
            type: str
            required: true
  ek_type:
    description:
      - EK to use (TCG EK Credential Profile names); by default the first whose certificate is in NV, in the order
        listed, or C(EK-RSA2048) without any certificate.
      - Credential activation works with the low-range C(EK-RSA2048) and C(EK-ECC256) only.
    type: str
    choices: [EK-RSA2048, EK-ECC256, EK-HIGH-RSA2048, EK-HIGH-ECC256, EK-HIGH-ECC384, EK-HIGH-ECC521, EK-HIGH-RSA3072,
              EK-HIGH-RSA4096]
  pve:
    description:
      - Ask Proxmox VE (C(qm) and C(pvesh) on this node, as root) about the VM O(vmid) and return it as RV(vm).
      - Only reads; it never changes the VM.
    type: bool
    default: false
  vmid:
    description:
      - Proxmox VMID (100 to 999999999) of the VM to report. Only used with O(pve=true).
      - The VM may be on any node of the cluster; compare RV(vm.node) with RV(pve_node) to know whether it is on this
        one.
    type: int
extends_documentation_fragment:
  - ironclaw.sealed.node
  - ironclaw.sealed.node.attributes
author:
  - ironclaw.sealed maintainers (@ironclaw)
"""

EXAMPLES = r"""
- name: Provision the node's TPM (SRK and epoch counter)
  ironclaw.sealed.ironclaw_node:
    state: present
    tcti: swtpm:host=127.0.0.1,port=2321

- name: Read the node facts with PCR 7
  ironclaw.sealed.ironclaw_node:
    pcrs: sha256:7
  register: node

- name: Attestation evidence, answers to the controller's credentials, and a quote
  ironclaw.sealed.ironclaw_node:
    state: attested
    credentials: "{{ challenge.credentials }}"
    nonce: "{{ challenge.nonce }}"
    pcrs: sha256:0,7
  register: attestation

- name: Check the node's health; each item with its fix
  ironclaw.sealed.ironclaw_node:
    state: checked
    controller_time: "{{ now(utc=true).timestamp() }}"
  register: health
  # health.healthy, health.summary (one line per check), health.problems (the failed ones)

- name: Where is VM 100, and what is its identity?
  ironclaw.sealed.ironclaw_node:
    pve: true
    vmid: 100
  register: node
  # node.vm.node, node.vm.uuid, node.vm.ctime, node.vm.status; node.pve_node is this host's node name
"""

RETURN = r"""
backend:
  description: The backend asked for.
  returned: always
  type: str
  sample: tpm2
provisioned:
  description: Whether the node has everything it needs (after this run, outside check mode).
  returned: always
  type: bool
srk_name:
  description: Hex TPM name of the SRK (software backend, the node name); approvals are bound to it.
  returned: when provisioned
  type: str
srk_public:
  description: Base64 TPM2B_PUBLIC of the SRK (software backend, the X25519 enrollment public key).
  returned: when provisioned
  type: str
epoch:
  description: Current value of the node's epoch counter (software backend, the KEK version).
  returned: when provisioned
  type: int
epoch_nv_index:
  description: NV index of the epoch counter, hex.
  returned: when provisioned with the tpm2 backend
  type: str
epoch_nv_name:
  description: Hex TPM name of the epoch counter (software backend, a derived name).
  returned: when provisioned
  type: str
pcrs:
  description: The PCR selection, values (hex, keyed C(bank:index)) and their SHA-256 digest.
  returned: when O(pcrs) is set
  type: dict
missing:
  description: What provisioning would create.
  returned: always
  type: list
  elements: str
actions:
  description: What this run did (or would do in check mode).
  returned: always
  type: list
  elements: str
attestation:
  description: Public attestation evidence of the node; nothing secret.
  returned: when O(state=attested), outside check mode or when the AK exists
  type: dict
  contains:
    ek_type:
      description: The EK used (TCG EK Credential Profile name).
      type: str
      sample: EK-RSA2048
    ek_cert_index:
      description: NV index of its certificate, hex; null when the TPM holds none.
      type: str
      sample: "0x01c00002"
    ek_certificate:
      description: Base64 DER of the EK certificate; null when the TPM holds none.
      type: str
    ek_public:
      description: Base64 TPM2B_PUBLIC of the EK the TPM created from its template.
      type: str
    srk_public:
      description: Base64 TPM2B_PUBLIC of the SRK.
      type: str
    srk_name:
      description: Hex TPM name of the SRK.
      type: str
    ak_public:
      description: Base64 TPM2B_PUBLIC of the AK.
      type: str
    ak_name:
      description: Hex TPM name of the AK.
      type: str
activation:
  description:
    - Per credential (C(srk), C(ak)), the secret the TPM released (base64), or the TPM's refusal in C(error).
    - A refusal is reported, not failed; the controller decides.
  returned: when O(credentials) is set
  type: dict
quote:
  description:
    - The quote; C(attest) is the TPMS_ATTEST the AK signed, C(signature) a marshaled TPMT_SIGNATURE (both base64),
      C(pcr_values) the values read right after (hex, keyed C(bank:index)), C(pcrs) the selection. Or C(error).
  returned: when O(nonce) is set
  type: dict
healthy:
  description: Whether no check failed (warnings do not count).
  returned: when O(state=checked)
  type: bool
checks:
  description: Each check in order; nothing secret (names, versions, counters, modes).
  returned: when O(state=checked)
  type: list
  elements: dict
  contains:
    name:
      description: What was checked.
      type: str
      sample: epoch NV index
    status:
      description: C(ok), C(warn), C(fail) or C(skipped) (an earlier failure kept it from running).
      type: str
      sample: fail
    detail:
      description: What was found, in plain words.
      type: str
    fix:
      description: What to do about it (empty when there is nothing to do).
      type: str
summary:
  description: One line per check, C(STATUS name - detail -> fix - ...), for the human summary.
  returned: when O(state=checked)
  type: list
  elements: str
problems:
  description: The lines of the failed checks.
  returned: when O(state=checked)
  type: list
  elements: str
pve_node:
  description: This host's Proxmox VE node name (its hostname up to the first dot, as Proxmox names nodes).
  returned: when O(pve=true) and O(vmid) is set
  type: str
  sample: pve1
vm:
  description: The VM O(vmid) as Proxmox VE reports it.
  returned: when O(pve=true) and O(vmid) is set
  type: dict
  contains:
    vmid:
      description: The VMID asked for.
      type: int
      sample: 100
    exists:
      description: Whether a QEMU VM with this VMID exists anywhere in the cluster.
      type: bool
    node:
      description: The cluster node that holds the VM.
      type: str
      returned: when RV(vm.exists)
      sample: pve1
    uuid:
      description: The VM's identity, the uuid of its C(smbios1) setting, lowercase.
      type: str
      returned: when RV(vm.exists)
      sample: 6f1c2a4e-9b7d-4c1a-8e2f-0a1b2c3d4e5f
    ctime:
      description: When the VM was created (Unix time, from its C(meta) setting); null for VMs older than that setting.
      type: int
      returned: when RV(vm.exists)
      sample: 1718000000
    status:
      description: C(running) or C(stopped) (C(unknown) while another node has not reported its VM's state).
      type: str
      returned: when RV(vm.exists)
      sample: stopped
"""

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.argspec import ArgumentSpec, node_spec
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.attest_states import (
    ATTEST_STATES,
    EK_TYPE_NAMES,
    run_attest_state,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.options import failing_on_errors
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.proxmox import proxmox_cli
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import ensure_dir
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.lock import locked
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.check import run_checks
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.context import resolve_tcti


def argument_spec() -> ArgumentSpec:
    return node_spec().update_argspec(
        state={"type": "str", "default": "gathered", "choices": ["gathered", "present", *ATTEST_STATES, "checked"]},
        pcrs={"type": "str"},
        controller_time={"type": "float"},
        nonce={"type": "str"},
        credentials={
            "type": "dict",
            "options": {
                target: {
                    "type": "dict",
                    "options": {
                        "id_object": {"type": "str", "required": True},
                        # encrypted to the TPM's EK: not a secret (validate-modules asks to say so)
                        "encrypted_secret": {"type": "str", "required": True, "no_log": False},
                    },
                }
                for target in ("srk", "ak")
            },
        },
        ek_type={"type": "str", "choices": list(EK_TYPE_NAMES)},
        pve={"type": "bool", "default": False},
        vmid={"type": "int"},
    )


def main():
    module = argument_spec().create_ansible_module()
    p = module.params
    proxmox = {}
    if p["state"] in ATTEST_STATES:
        with failing_on_errors(module):
            result = run_attest_state(p, module.check_mode)
        module.exit_json(**result)
    if p["state"] == "checked":
        with failing_on_errors(module):
            pcrs = PcrSelection.parse(p["pcrs"]) if p["pcrs"] else None
            report = run_checks(p["backend"], resolve_tcti(p["tcti"]), p["state_dir"], pcrs, p["controller_time"])
        module.exit_json(changed=False, backend=p["backend"], **report.to_result())
    with failing_on_errors(module):
        pcrs = PcrSelection.parse(p["pcrs"]) if p["pcrs"] else None
        actions = []
        with open_backend(p["backend"], tcti=p["tcti"], state_dir=p["state_dir"]) as backend:
            if p["state"] == "present":
                actions = backend.plan_provision()
                if actions and not module.check_mode:
                    ensure_dir(p["state_dir"], 0o700)
                    with locked(p["state_dir"], "node", p["lock_timeout"]):
                        actions = backend.provision()
            facts = backend.facts(pcrs).to_result()
        if p["pve"] and p["vmid"] is not None:
            cli = proxmox_cli(module)
            proxmox = {"vm": cli.vm_info(p["vmid"]).to_result(), "pve_node": cli.node}
    module.exit_json(
        changed=bool(actions),
        actions=actions,
        diff={"before": {"missing": facts["missing"]}, "after": {"missing": [] if actions else facts["missing"]}},
        **facts,
        **proxmox,
    )


if __name__ == "__main__":
    main()
