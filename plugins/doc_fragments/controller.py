# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # The controller's options (argspec: module_utils/_ansible/argspec.py controller_spec, signing_spec,
    # manifest_lifetime_spec).
    DOCUMENTATION = r"""
options:
  controller_dir:
    description:
      - The controller's directory, trust root and its signing keys, policy keys, the newest store head this
        controller signed and its move journal. Keys never leave it.
    type: path
    default: ~/.local/share/ironclaw
"""

    SIGNING = r"""
options:
  signing:
    description:
      - C(online) signs with this controller's trust-root keys, C(offline) writes signing requests to O(sign_dir)
        for the offline machine and picks up what it signed.
    type: str
    default: online
    choices: [online, offline]
  sign_dir:
    description:
      - With O(signing=offline), the directory where signing requests and signed envelopes are exchanged.
    type: path
"""

    LIFETIME = r"""
options:
  expires_days:
    description: Lifetime of a new manifest version, in days.
    type: int
    default: 90
  max_days:
    description:
      - The longest lifetime (expires - issued_at) signed, in days (at most 366). A longer one is refused with nothing
        signed, online and on the offline machine alike.
    type: int
    default: 90
  resign_days:
    description: Re-issue an unchanged manifest when the newest version expires within this many days.
    type: int
    default: 30
"""
