# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # Node options shared by node-side modules (argspec: module_utils/_ansible/options.py).
    DOCUMENTATION = r"""
options:
  state_dir:
    description:
      - Directory holding the node's sealed state; each VM gets C(<state_dir>/<vmid>/).
      - The software backend also keeps its node KEK and enrollment key under C(<state_dir>/node/).
    type: path
    default: /var/lib/ironclaw
  tcti:
    description:
      - How to reach the TPM (tpm2 backend), for example C(device:/dev/tpmrm0) or C(swtpm:host=127.0.0.1,port=2321).
      - Defaults to the node's E(IRONCLAW_TCTI) environment variable, then C(device:/dev/tpmrm0).
    type: str
  backend:
    description:
      - C(tpm2) seals to the node's TPM. C(software) wraps keys under a node KEK file, for nodes without a TPM.
      - Always chosen explicitly; there is no fallback from one to the other.
    type: str
    default: tpm2
    choices: [tpm2, software]
  lock_timeout:
    description:
      - Seconds to wait for another ironclaw run on the same VM or node to finish before failing.
    type: float
    default: 120
"""

    VM = r"""
options:
  vmid:
    description:
      - Proxmox VMID of the VM (100 to 999999999).
    type: int
    required: true
  vm_uuid:
    description:
      - The VM's identity (the C(smbios1) uuid in Proxmox). VMIDs are reused; the uuid tells VMs apart.
    type: str
    required: true
"""

    ATTRIBUTES = r"""
attributes:
  check_mode:
    description: Can run in check mode and return the changes it would make.
    support: full
  diff_mode:
    description: Returns details on what changed (or would change) in C(--diff) mode.
    support: full
  idempotent:
    description: Running it again with the same arguments changes nothing.
    support: full
"""
