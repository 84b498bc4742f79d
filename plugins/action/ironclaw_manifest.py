# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_manifest: signing states run here on the controller (keys never leave it); the
node and store states (built, stored, listed, verified, pinned) run as a module on the target host.

The store states are checked here too: ``listed`` is accepted only if the store agrees with its
signed head and the head is not older than the newest this controller signed (A5), node records
are verified against this controller's trust root (A4), and the trust roots it returns are this
controller's own, never the store's copies (A6). ``stored`` (and ``enrolled``) are followed by
the next signed head, under a controller-side lock so that two writes cannot interleave.
"""

from __future__ import annotations

from datetime import datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.argspec import DEFAULT_CONTROLLER_DIR
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.manifest_states import argument_spec
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.ledger import controller_roots
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.node_record import (
    record_to_sign,
    verified_record,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.lock import locked
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest import dsse
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.keystore import TrustKeyStore
from ansible_collections.ironclaw.sealed.plugins.plugin_utils import store_host
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.action_module import IronclawAction
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.manifest_controller import (
    checked_listing,
    current_record,
    node_record_envelope,
    pending,
    signed,
    signed_head_after,
    trusted,
)

MODULE = "ironclaw.sealed.ironclaw_manifest"


HANDLERS = {"trusted": trusted, "signed": signed, "requests": pending}
STORE_STATES = ("stored", "listed", "enrolled")


class ActionModule(IronclawAction):
    argument_spec = staticmethod(argument_spec)
    HANDLERS = HANDLERS

    def run_action(self, args: dict) -> dict:
        if args["state"] not in STORE_STATES:
            return super().run_action(args)
        self.require_crypto()
        if "controller_dir" not in self._task.args:
            # Roles pass ironclaw_controller_dir; a task that does not still checks against it.
            args["controller_dir"] = self._templar.template(
                self._vars.get("ironclaw_controller_dir", DEFAULT_CONTROLLER_DIR)
            )
        now = clock(args["now"])
        with locked(
            TrustKeyStore(args["controller_dir"]).controller_dir,
            "store-head",
            args["lock_timeout"],
            shared=args["state"] == "listed",
        ):
            return getattr(self, "_" + args["state"])(args, now)

    def _module(self, module_args: dict) -> dict:
        """The store host's half; in process when the store host is the controller (plugin_utils/store_host). A
        failure raises, and becomes the task's failure in IronclawAction."""
        return store_host.call(self, MODULE, module_args, self._vars, self._task.check_mode)

    def _write_head(self, args: dict):
        return lambda head: self._module({"state": "stored", "store_dir": args["store_dir"], "head": head})

    def _listed(self, args: dict, now: datetime) -> dict:
        listing = self._module(dict(self._task.args))
        if listing.get("failed"):
            return listing
        _root, out = checked_listing(listing, args["controller_dir"], now)
        if args["node_name"] is not None:
            # A4: a record counts only once this controller's trust root verified it for this node.
            doc = listing["node_record"]
            # A record signed before a trust-root rotation counts under the root that signed it.
            roots = controller_roots(args["controller_dir"], now)
            out["node"] = None if doc is None else verified_record(doc, roots, args["node_name"], now).to_dict()
        return out

    def _stored(self, args: dict, now: datetime) -> dict:
        result = self._module(dict(self._task.args))
        if result.get("failed") or self._task.check_mode or "view" not in result:
            return result
        return signed_head_after(result, args["controller_dir"], now, self._write_head(args))

    def _enrolled(self, args: dict, now: datetime) -> dict:
        """Sign and store a node's record from its facts and its attestation evidence (A4, DESIGN §8): the SRK may
        change only with replace."""
        listing = self._module({"state": "listed", "store_dir": args["store_dir"], "node_name": args["node_name"]})
        if listing.get("failed"):
            return listing
        checked_listing(listing, args["controller_dir"], now)
        roots = controller_roots(args["controller_dir"], now)
        if self._task.check_mode and args["attestation"] is None and args["node_facts"].get("backend") == "tpm2":
            # The proof needs the node's AK, which check mode does not create: enrollment would attest it first.
            return {"changed": True, "node": None, "reason": "would attest the node's TPM, then sign its record"}
        current = current_record(listing["node_record"], roots, args["node_name"], args["replace"], now)
        record, reason = record_to_sign(
            args["node_facts"], args["node_name"], current, args["replace"], now, args["attestation"]
        )
        if record is None:
            return {"changed": False, "node": current.to_dict(), "reason": reason}
        if self._task.check_mode:
            return {"changed": True, "node": record.to_dict(), "reason": reason}
        envelope = node_record_envelope(args, record, now)
        result = self._module(
            {"state": "stored", "store_dir": args["store_dir"], "node_record": dsse.envelope_to_dict(envelope)}
        )
        if result.get("failed"):
            return result
        result = signed_head_after(result, args["controller_dir"], now, self._write_head(args))
        return {"changed": True, "node": record.to_dict(), "reason": reason, "head": result["head"]}
