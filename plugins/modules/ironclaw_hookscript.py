#!/usr/bin/python
# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: ironclaw_hookscript
short_description: Refuse to start a Proxmox VE VM whose sealed state does not verify (pre-start hookscript)
version_added: 0.1.0
description:
  - Installs the collection's pre-start hookscript as a snippet on a Proxmox VE node and, with O(vmid), makes it the
    VM's hookscript (C(qm set <vmid> --hookscript <storage>:snippets/<file>)).
  - Before a VM with the hookscript starts, the node checks what it holds for the VM against the newest signed
    manifest it verified (C(<state_dir>/<vmid>/manifest.json)) and the trust roots it holds, without the
    controller. The signatures, the expiry, the floor (C(<state_dir>/floors/<vm_uuid>.json), which survives a
    restore of an old copy of the VM's directory), the VM's identity from Proxmox (smbios1 uuid, creation time),
    the cluster, and the SHA-256 and size of the keyslot and every blob must match. The manifest must also name
    the node the keyslot is bound to and, once the node record is written (O(backend) or O(node_name)), this
    node. Otherwise the start is refused.
  - The hook fails closed. A VM with the hookscript but no sealed state on the node, no cached manifest, or an error
    of any kind does not start. The hook does not unseal anything, so no TPM command runs at VM start.
  - The hookscript is one file, a Python zipapp run by C(/usr/bin/python3). The collection's action plugin builds it
    on the controller with the settings O(state_dir) and O(cluster) inside, and hands it to the node as O(content).
    The node needs python3-cryptography, not Ansible.
options:
  state:
    description:
      - C(present) installs the snippet (and the node record with O(backend) or O(node_name)) and, with O(vmid),
        attaches it to the VM. A VM that already has another hookscript is refused, not overwritten.
      - C(absent) with O(vmid) detaches the hookscript from the VM if it is this one (the snippet stays for other
        VMs). Without O(vmid) it removes the snippet and the node record, refused while a VM of this node still
        uses the snippet (with O(pve)).
    type: str
    default: present
    choices: [present, absent]
  state_dir:
    description:
      - The node's state directory, written into the hookscript (an absolute path).
    type: path
    default: /var/lib/ironclaw
  cluster:
    description:
      - The cluster name manifests record (C(ironclaw_cluster)), written into the hookscript.
    type: str
    default: default
  snippets_dir:
    description:
      - Directory of O(storage)'s snippets on the node (storage C(local) keeps them in C(/var/lib/vz/snippets)).
        Created if missing.
    type: path
    default: /var/lib/vz/snippets
  storage:
    description:
      - The Proxmox storage whose snippets directory is O(snippets_dir); the hookscript's volume is
        C(<storage>:snippets/<file>).
    type: str
    default: local
  file:
    description:
      - File name of the snippet.
    type: str
    default: ironclaw-prestart.pyz
  vmid:
    description:
      - A VM of this node to attach the hookscript to (O(state=present)) or detach it from (O(state=absent)).
      - Without it, only the snippet is installed or removed. Needs O(pve=true).
    type: int
  pve:
    description:
      - Talk to Proxmox VE (C(qm) and C(pvesh) on the node, as root). With C(false) only the files are written, for
        hosts without Proxmox VE.
    type: bool
    default: true
  node_name:
    description:
      - This node's id as manifests record it, in hex, that is the RV(ironclaw.sealed.ironclaw_node#module:srk_name)
        result. Written to C(<state_dir>/hook/node.json) (mode 0600); the hook then also refuses a manifest that
        names another node, so a VM directory copied whole from another node does not start.
      - Mutually exclusive with O(backend), which reads the id on the node instead.
    type: str
  backend:
    description:
      - With O(state=present), read this node's id from its backend and write it to C(<state_dir>/hook/node.json)
        (mode 0600), as O(node_name) would; C(tpm2) reads the SRK name through O(tcti), C(software) the enrollment
        name under O(state_dir). The node must be enrolled.
      - Without O(backend) and O(node_name) no node record is written (an existing one is kept).
    type: str
    choices: [tpm2, software]
  tcti:
    description:
      - How to reach the TPM with O(backend=tpm2), for example C(device:/dev/tpmrm0).
      - Defaults to the node's E(IRONCLAW_TCTI) environment variable, then C(device:/dev/tpmrm0).
    type: str
  content:
    description:
      - The hookscript itself (base64). Set by the action plugin, which builds it on the controller; do not set it.
    type: str
attributes:
  check_mode:
    description: Reports what would be written, attached or removed, and changes nothing.
    support: full
  diff_mode:
    description: The snippet's SHA-256, the recorded node id and, with O(vmid), the VM's hookscript, before and after.
    support: full
  idempotent:
    description: The hookscript's bytes depend only on the collection and its settings; a second run changes nothing.
    support: full
  action:
    description: The hookscript is built by an action plugin on the controller.
    support: full
notes:
  - The hook checks the files against the newest manifest the node verified and cached (the provision and verify
    playbooks cache it; M(ironclaw.sealed.ironclaw_manifest) does with C(state=verified) and C(cache=true)).
    Attach the hookscript only after that, or the VM will not start.
  - Proxmox VE runs one hookscript per VM.
seealso:
  - module: ironclaw.sealed.ironclaw_manifest
  - module: ironclaw.sealed.ironclaw_node
author:
  - ironclaw.sealed maintainers (@ironclaw)
"""

EXAMPLES = r"""
- name: Install the pre-start hookscript, record this node's id (read from its TPM) and attach it to VM 200
  ironclaw.sealed.ironclaw_hookscript:
    vmid: 200
    cluster: "{{ ironclaw_cluster }}"
    state_dir: "{{ ironclaw_state_dir }}"
    backend: tpm2
    tcti: "{{ ironclaw_tcti }}"

- name: Read the node's id
  ironclaw.sealed.ironclaw_node:
    tcti: "{{ ironclaw_tcti }}"
  register: node_facts

- name: The same with the id read beforehand
  ironclaw.sealed.ironclaw_hookscript:
    vmid: 200
    cluster: "{{ ironclaw_cluster }}"
    state_dir: "{{ ironclaw_state_dir }}"
    node_name: "{{ node_facts.srk_name }}"

- name: Only install the snippet (hosts without Proxmox VE, or to attach it later)
  ironclaw.sealed.ironclaw_hookscript:
    pve: false

- name: Detach the hookscript from VM 200
  ironclaw.sealed.ironclaw_hookscript:
    state: absent
    vmid: 200
"""

RETURN = r"""
path:
  description: Path of the snippet on the node.
  returned: always
  type: str
  sample: /var/lib/vz/snippets/ironclaw-prestart.pyz
volid:
  description: The hookscript's Proxmox volume, as a VM config names it.
  returned: always
  type: str
  sample: local:snippets/ironclaw-prestart.pyz
attached:
  description:
    - With O(vmid), whether the hookscript is the VM's hookscript after the run (in check mode, would be).
    - C(null) without O(vmid).
  returned: always
  type: bool
  sample: true
"""

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.hookscript_states import (
    argument_spec,
    hookscript_state,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.options import failing_on_errors
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.proxmox import proxmox_cli


def main():
    module = argument_spec().create_ansible_module()
    p = module.params
    with failing_on_errors(module):
        asks_proxmox = p["pve"] and (p["vmid"] is not None or p["state"] == "absent")
        result = hookscript_state(p, module.check_mode, proxmox_cli(module) if asks_proxmox else None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
