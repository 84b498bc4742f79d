# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    # The manifest store (argspec: module_utils/_ansible/argspec.py store_spec).
    DOCUMENTATION = r"""
options:
  store_dir:
    description:
      - The manifest store's directory on the store host (the task's host, or its C(delegate_to)); the controller
        checks what it holds against the store's signed head.
    type: path
"""
