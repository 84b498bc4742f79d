# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception hierarchy of the collection.

Code in module_utils raises these; modules and action plugins turn them into
``fail_json(msg=str(err))`` once, at the edge. Messages say what was expected,
what was found and what to do. They never contain secret bytes.
"""

from __future__ import annotations


class IronclawError(Exception):
    """Base class: every error the collection raises on purpose."""


class InputError(IronclawError):
    """A parameter given by the user is malformed (bad VMID, uuid, name...)."""


class FormatError(IronclawError):
    """A file or document does not parse under its strict format."""


class PolicyError(IronclawError):
    """A policy, approval or grant is malformed, unknown or does not apply."""


class VerificationError(IronclawError):
    """Authenticated data failed its check (tampered, swapped, wrong VM...)."""


class TpmError(IronclawError):
    """The TPM refused a command or cannot be reached."""


class BackendError(IronclawError):
    """Node backend state is missing or inconsistent (not provisioned, KEK missing...)."""


class LockError(IronclawError):
    """A per-VM or per-node lock could not be taken in time."""


class ProxmoxError(IronclawError):
    """A Proxmox command (qm, pvesh) failed, or printed what does not parse; or the VM is not as required."""
