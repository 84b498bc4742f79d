#!/usr/bin/python
# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: ironclaw_attest
short_description: Prove that a node's SRK lives in a genuine TPM, and show each step of the proof
version_added: 0.1.0
description:
  - Re-runs a node's attestation proof with fresh credentials and a fresh nonce, and reports each link as passed or
    failed in plain words. Run it against the node; it is an action plugin, and every check runs on the controller.
  - The node (M(ironclaw.sealed.ironclaw_node) with C(state=attested)) reports its EK certificate, EK, SRK and AK
    public areas. The controller checks the EK trust (O(ek_trust)), that the EK is the certified key, and the SRK
    and AK attributes. It then makes credentials for the SRK and the AK with TPM2_MakeCredential and a quote nonce.
    The node answers them with TPM2_ActivateCredential and TPM2_Quote, and the controller checks the answers.
  - The last link, C(record unchanged since enrollment), compares the SRK's name with the C(srk_name) of the
    node's signed record (O(node_record)), whose signature is verified first against the controller's own trust
    roots (in O(controller_dir)). A node whose TPM was replaced or cleared fails there, naming both names.
  - With O(enroll=true) (the C(node_enroll) role) the record link is left out and the evidence is returned as
    C(record), for M(ironclaw.sealed.ironclaw_manifest) C(state=enrolled) to sign into the node record.
  - The links, in order, are C(EK certificate chain) and C(EK public matches its certificate) (or C(EK pin), or
    C(EK trust) for tofu), C(SRK attributes), C(AK attributes), C(SRK activation), C(AK activation), C(quote),
    and C(record unchanged since enrollment). The task fails at the first broken link, and its message starts
    with that link's name.
  - The challenge's secrets and the node's answers to them never leave the action. They are not in the result and
    not logged.
options:
  ek_trust:
    description:
      - How the controller trusts the node's EK (C(ironclaw_ek_trust)).
      - C(ca) needs an EK certificate, read from the TPM's NV, that chains to a root in O(ek_ca_dir).
      - C(pin) needs the SHA-256 of the EK public to equal O(ek_pin). A refusal prints the value to pin.
      - C(tofu) checks nothing about the EK and says so in its link.
    type: str
    default: ca
    choices: [ca, pin, tofu]
  ek_ca_dir:
    description:
      - Directory on the controller with the EK root and intermediate CA certificates (PEM), C(ironclaw_ek_ca_dir).
        Used with O(ek_trust=ca). Defaults to C(ek-ca) in O(controller_dir).
    type: path
  ek_pin:
    description:
      - The node's pinned EK, C(sha256:) and 64 hex digits (C(ironclaw_ek_pin)). Used with O(ek_trust=pin).
    type: str
  pcrs:
    description:
      - The PCRs the AK quotes with this run's nonce.
    type: str
    default: sha256:0,7
  node_record:
    description:
      - The node's signed record as the store holds it, the C(node_record) result of
        M(ironclaw.sealed.ironclaw_manifest) with C(state=listed) and C(node_name). Its signature is checked
        against the controller's trust roots before anything else; an unsigned or altered record is refused.
        Without it, the last link fails.
    type: dict
  controller_dir:
    description:
      - The controller directory whose trust roots verify O(node_record), and whose C(ek-ca) is the default of
        O(ek_ca_dir). Defaults to C(ironclaw_controller_dir), else C(~/.local/share/ironclaw).
    type: path
  enroll:
    description:
      - Run the proof for an enrollment. The C(record unchanged since enrollment) link is left out, and a
        software-backend node is reported as such (C(record) is null) instead of refused.
    type: bool
    default: false
  ek_type:
    description:
      - The EK to use, as in M(ironclaw.sealed.ironclaw_node). By default the first whose certificate is in NV.
    type: str
    choices: [EK-RSA2048, EK-ECC256, EK-HIGH-RSA2048, EK-HIGH-ECC256, EK-HIGH-ECC384, EK-HIGH-ECC521, EK-HIGH-RSA3072,
              EK-HIGH-RSA4096]
extends_documentation_fragment:
  - ironclaw.sealed.node
attributes:
  check_mode:
    description: Reports the AK it would create on a node that has none, and proves nothing then. Otherwise it runs
      the proof, which changes nothing.
    support: full
  diff_mode:
    description: Nothing to diff.
    support: none
  idempotent:
    description: Creates the node's AK once, and changes nothing afterwards.
    support: full
  action:
    description: Runs as an action plugin on the controller and calls the node twice.
    support: full
notes:
  - Software-backend nodes are refused, since they have no TPM to attest (with O(enroll=true) they are reported).
  - Playbook C(ironclaw.sealed.attest) runs this for every node of C(ironclaw_nodes) and prints the links.
seealso:
  - module: ironclaw.sealed.ironclaw_node
  - module: ironclaw.sealed.ironclaw_manifest
author:
  - ironclaw.sealed maintainers (@ironclaw)
"""

EXAMPLES = r"""
- name: Read the node's record from the store, verified on the controller
  ironclaw.sealed.ironclaw_manifest:
    state: listed
    store_dir: "{{ ironclaw_store_dir }}"
    node_name: "{{ inventory_hostname }}"
  delegate_to: "{{ ironclaw_store_host }}"
  register: listing

- name: Attest the node
  ironclaw.sealed.ironclaw_attest:
    ek_trust: ca
    ek_ca_dir: /etc/ironclaw/ek-ca
    node_record: "{{ listing.node_record }}"
  register: attestation
"""

RETURN = r"""
links:
  description: Each link checked, in order, with C(name), C(passed), C(detail) (what was checked, in plain words)
    and C(line) (the three in one line).
  returned: always
  type: list
  elements: dict
  sample:
    - name: SRK activation
      passed: true
      detail: "the TPM holding the EK released the secret bound to the SRK named 000b5a..."
      line: "SRK activation: passed: the TPM holding the EK released the secret bound to the SRK named 000b5a..."
link:
  description: The name of the link that failed.
  returned: on failure at a link
  type: str
record:
  description: The public evidence (trust mode, EK public hash, certificate chain fingerprints, SRK and AK names and
    public areas, time). It holds no secret. Null for a software-backend node with O(enroll=true).
  returned: when every link passed
  type: dict
actions:
  description: What the node did (creating its AK the first time).
  returned: always
  type: list
  elements: str
error:
  description: The kind of refusal, e.g. C(EkChainError) or C(ActivationError).
  returned: on failure
  type: str
"""
