# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a node backend tells about itself; the same shape for tpm2 and software."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field


@dataclass
class NodeFacts:
    backend: str
    provisioned: bool
    # The name approvals are bound to: SRK name (tpm2) or software node name.
    node_name: bytes | None = None
    # SRK TPM2B_PUBLIC (tpm2) or X25519 enrollment public key (software).
    node_public: bytes | None = None
    epoch: int | None = None
    epoch_nv_index: int | None = None
    epoch_nv_name: bytes | None = None
    pcr_selection: str | None = None
    pcr_values: dict[str, bytes] = field(default_factory=dict)
    pcr_digest: bytes | None = None
    missing: list[str] = field(default_factory=list)

    def to_result(self) -> dict:
        """JSON-friendly form returned by ironclaw_node (public values only)."""
        return {
            "backend": self.backend,
            "provisioned": self.provisioned,
            "srk_name": self.node_name.hex() if self.node_name else None,
            "srk_public": base64.b64encode(self.node_public).decode() if self.node_public else None,
            "epoch": self.epoch,
            "epoch_nv_index": f"0x{self.epoch_nv_index:08x}" if self.epoch_nv_index is not None else None,
            "epoch_nv_name": self.epoch_nv_name.hex() if self.epoch_nv_name else None,
            "pcrs": (
                {
                    "selection": self.pcr_selection,
                    "values": {k: v.hex() for k, v in self.pcr_values.items()},
                    "digest": self.pcr_digest.hex(),
                }
                if self.pcr_selection
                else None
            ),
            "missing": list(self.missing),
        }
