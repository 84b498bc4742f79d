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


# Refusals of signed, tamper-evident state (python-tuf style): a test asserts the
# type, then that trusted state did not move.
class RollbackError(VerificationError):
    """A document older than one already trusted (floor, store head, trust root) was presented."""


class TruncationError(RollbackError):
    """A store misses documents its signed head (or a newer head this side already saw) lists."""


class ForkError(VerificationError):
    """Two different documents claim the same version."""


class ExpiredError(VerificationError):
    """A signed document is past its expiry (or not yet valid)."""


class ThresholdError(VerificationError):
    """Fewer valid signatures than the threshold of trusted keys."""


class DecommissionedError(VerificationError):
    """The VM was decommissioned: its chain ends in a tombstone."""


class UntrustedRootError(VerificationError):
    """A trust root that does not chain from the one this side pinned."""


class AttestationError(VerificationError):
    """A link of a node's attestation proof broke (DESIGN §8); ``link`` names it in plain words.

    The message starts with the link, so an operator reading one line knows which step refused.
    """

    link = "attestation"

    def __init__(self, message: str, link: str | None = None):
        if link is not None:
            self.link = link
        super().__init__(f"{self.link}: FAILED: {message}")


class EkChainError(AttestationError):
    """The EK certificate does not chain to a root in the EK CA directory (or is missing, expired, malformed)."""

    link = "EK certificate chain"


class EkPinError(AttestationError):
    """The EK public does not hash to the node's pinned value (or no pin is set)."""

    link = "EK pin"


class EkMismatchError(AttestationError):
    """The EK the TPM created is not the key its certificate certifies."""

    link = "EK public matches its certificate"


class ActivationError(AttestationError):
    """The TPM did not return the controller's credential secret: the key is not resident next to that EK."""

    link = "SRK activation"


class KeyAttributesError(AttestationError):
    """An SRK or AK public area lacks an attribute that keeps it inside the TPM (fixedTPM, restricted...)."""

    link = "SRK attributes"


class QuoteError(AttestationError):
    """A quote's signature, nonce, PCR selection or PCR digest does not check out."""

    link = "quote"


class PlacementError(PolicyError):
    """The signed ledger does not place the VM where an approval or grant would put it."""


class UnattestedTargetError(PlacementError):
    """A migration (or recovery) target whose signed record does not prove a genuine TPM: enrolled with tofu, or
    before attestation existed (DESIGN §8); allowed only with ironclaw_allow_tofu_targets."""


class RecordedPolicyError(PolicyError):
    """A request contradicts the VM's policy as its signed manifest records it."""


class UnconfirmedError(PolicyError):
    """A signing request was not confirmed by the operator: nothing was signed."""


class LifetimeError(PolicyError):
    """A requested lifetime exceeds what the controller signs."""


class TpmError(IronclawError):
    """The TPM refused a command or cannot be reached."""


class BackendError(IronclawError):
    """Node backend state is missing or inconsistent (not provisioned, KEK missing...)."""


class LockError(IronclawError):
    """A per-VM or per-node lock could not be taken in time."""


class ProxmoxError(IronclawError):
    """A Proxmox command (qm, pvesh) failed, or printed what does not parse; or the VM is not as required."""


class RefusedError(IronclawError):
    """A node of the run refused in its check (probe): nothing was changed on any node."""


class IncompleteError(IronclawError):
    """The run did what it could; the rest waits (an unreachable node, an offline signature): re-run it then."""
