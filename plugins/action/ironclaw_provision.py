# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_provision: each step of provisioning is one controller action and at most one remote host.

Like ansible.builtin.copy, the action does the controller's part in-process (trust root and signing keys,
policy keys and approvals, manifest and head signing, secret files read into memory) and runs a module
on the one host the task talks to: the node (``identified``, ``sealed``, ``cached``) or the store host
through ``delegate_to`` (``planned``, ``recorded``). What may be signed is decided by the authority rules
(module_utils/_authority) through the functions the ironclaw_policy and ironclaw_manifest actions use.
"""

from __future__ import annotations

import os

from ansible_collections.ironclaw.sealed.plugins.action.ironclaw_policy import run_state as policy_state
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.provision_states import argument_spec
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest import quoted_pcrs
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority import provision as rules
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.ledger import VmLedger, controller_roots
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.node_record import verified_record
from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import read_regular
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.lock import locked
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.keystore import TrustKeyStore
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.spec import parse_policy
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.engine import MAX_PLAINTEXT_LEN
from ansible_collections.ironclaw.sealed.plugins.plugin_utils import store_host
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.action_module import IronclawAction
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.faults import reached
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.manifest_controller import (
    checked_listing,
    signed,
    signed_head_after,
    trusted,
)

NODE_MODULE = "ironclaw.sealed.ironclaw_node"
MANIFEST_MODULE = "ironclaw.sealed.ironclaw_manifest"
PROVISION_MODULE = "ironclaw.sealed.ironclaw_provision"
# The node facts a step passes on (not the module's bookkeeping, nor what Proxmox said).
_NOT_FACTS = ("changed", "actions", "diff", "invocation", "vm", "pve_node", "failed", "msg")


class ActionModule(IronclawAction):
    argument_spec = staticmethod(argument_spec)

    def run_action(self, args: dict) -> dict:
        self.require_crypto()
        if args["node_name"] is None:
            args["node_name"] = self._vars.get("inventory_hostname")
        return getattr(self, "_" + args["step"])(args)

    # -- the remote host -------------------------------------------------------
    def _module(self, name: str, module_args: dict) -> dict:
        module_args = {k: v for k, v in module_args.items() if v is not None}
        if name == MANIFEST_MODULE:
            # The store host's half: in process when the store host is the controller (plugin_utils/store_host).
            return store_host.call(self, name, module_args, self._vars, self._check)
        out = self.run_module(name, module_args)
        out.pop("invocation", None)
        return out

    def _node_args(self, args: dict) -> dict:
        return {k: args[k] for k in ("backend", "tcti", "state_dir", "lock_timeout")}

    def _listing(self, args: dict, now, **what) -> dict:
        listing = self._module(MANIFEST_MODULE, {"state": "listed", "store_dir": args["store_dir"], **what})
        return checked_listing(listing, args["controller_dir"], now)[1]

    @property
    def _check(self) -> bool:
        return bool(self._task.check_mode)

    # -- the steps -------------------------------------------------------------
    def _identified(self, args: dict) -> dict:
        """The VM's identity and the node's facts, read once on the node."""
        vmid = validate.vmid(args["vmid"])
        if args["vm_uuid"]:
            validate.vm_uuid(args["vm_uuid"])
        pcrs = parse_policy(args["policy"]).pcrs
        facts = self._module(
            NODE_MODULE,
            {
                **self._node_args(args),
                "pcrs": str(pcrs) if pcrs else None,
                "pve": args["pve"],
                "vmid": vmid if args["pve"] else None,
            },
        )
        identity = rules.vm_identity(
            vmid,
            node_name=args["node_name"],
            uuid=args["vm_uuid"],
            ctime=args["vm_ctime"],
            pve={"vm": facts["vm"], "pve_node": facts["pve_node"]} if args["pve"] else None,
            vm_nodes=args["vm_nodes"],
        )
        node = {k: v for k, v in facts.items() if k not in _NOT_FACTS}
        if pcrs and args["backend"] == "tpm2":
            # DESIGN §8: the approval binds the values of a quote under this controller's nonce, checked at planned
            # with the AK of the node's signed record, not the values the node read for its facts.
            nonce = quoted_pcrs.new_nonce()
            answer = self._module(NODE_MODULE, {**self._node_args(args), **quoted_pcrs.quote_request(str(pcrs), nonce)})
            node["pcr_quote"] = {"selection": str(pcrs), "nonce": canonical.b64encode(nonce), "quote": answer["quote"]}
        return {"changed": False, "identity": identity, "node": node}

    def _placed(self, args: dict) -> dict:
        """On the store host: the VM's chain, verified here; refused unless it places the VM, active, on this node.
        Returns what the node's verification takes (newest envelope, floor, head, the controller's trust roots)."""
        identity = _need(args, "identity", "store_dir")["identity"]
        now = clock(args["now"])
        listing = self._listing(args, now, vm_uuid=identity["uuid"])
        ledger = VmLedger.verify(identity["uuid"], listing["chain"], controller_roots(args["controller_dir"], now))
        rules.placed_here(ledger, identity["vmid"], args["node_name"])
        record = {key: listing[key] for key in ("floor", "head", "trust_roots")}
        return {"changed": False, "record": {**record, "envelope": listing["latest"], "version": ledger.newest.version}}

    def _planned(self, args: dict) -> dict:
        """Decide on the controller, from the store's verified chain and node record, and sign the approval."""
        identity = _need(args, "identity", "node", "store_dir")["identity"]
        now = clock(args["now"])
        cdir = args["controller_dir"]
        trusted(
            {
                "now": args["now"],
                "controller_dir": cdir,
                "create": False,
                "rotate": False,
                "signing": args["signing"],
                "root_expires_days": 365,
            },
            self._check,
        )
        rules.secret_request(_expanded(args["secrets"]), os.path.isfile)
        with locked(TrustKeyStore(cdir).controller_dir, "store-head", args["lock_timeout"], shared=True):
            listing = self._listing(args, now, vm_uuid=identity["uuid"], node_name=args["node_name"])
        decided = policy_state(
            {
                "state": "approved",
                "vmid": identity["vmid"],
                "vm_uuid": identity["uuid"],
                "controller_dir": cdir,
                "node": args["node"],
                "node_name": args["node_name"],
                "node_record": listing["node_record"],
                "chain": listing["chain"],
                "provision": True,
                "pcrs": self._quoted_pcrs(args, listing, now),
                "policy": args["policy"],
                "now": args["now"],
            },
            self._check,
        )
        plan = {k: decided.get(k) for k in ("policy_key", "key_name", "policy", "approval")}
        return {"changed": decided["changed"], "plan": plan}

    def _quoted_pcrs(self, args: dict, listing: dict, now) -> dict | None:
        """The PCR binding of the approval: from the node's quote (identified), verified with the AK of its signed
        record; a policy without PCRs binds none."""
        quoted = args["node"].get("pcr_quote")
        if not quoted:
            if args["node"].get("pcrs"):
                raise InputError("the node's PCR values come with a quote only (step identified, tpm2 backend)")
            return None
        record = verified_record(
            listing["node_record"], controller_roots(args["controller_dir"], now), args["node_name"], now
        )
        nonce = canonical.b64decode(quoted["nonce"], "pcr_quote.nonce")
        return quoted_pcrs.quoted_binding(record, quoted["selection"], nonce, quoted, args["node_name"])

    def _sealed(self, args: dict) -> dict:
        """Seal and test-unseal on the node in one module run; files are read here, in memory."""
        _need(args, "identity", "secrets")
        secrets = []
        for item in rules.secret_request(_expanded(args["secrets"]), os.path.isfile):
            if item.get("src") is None:
                secrets.append({k: v for k, v in item.items() if k != "src" and v is not None})
                continue
            data = read_regular(item["src"], f"secret '{item['name']}' source file", MAX_PLAINTEXT_LEN)
            secrets.append({"name": item["name"], "content_base64": canonical.b64encode(data)})
            del data
        out = self._module(
            PROVISION_MODULE,
            {
                **self._node_args(args),
                "step": "sealed",
                "identity": args["identity"],
                "node_name": args["node_name"],
                "cluster": args["cluster"],
                "policy": args["policy"],
                "policy_key": args["policy_key"],
                "approval": args["approval"],
                "secrets": secrets,
            },
        )
        del secrets
        if not self._check:
            reached("provision.sealed")
        return out

    def _recorded(self, args: dict) -> dict:
        """Sign the next manifest version if the sealed state changed, store it, sign the store's head."""
        if self._check:
            return {"changed": False, "msg": "check mode: nothing sealed yet, nothing recorded"}
        identity = _need(args, "identity", "statement", "store_dir")["identity"]
        now = clock(args["now"])
        cdir = args["controller_dir"]
        # Exclusive: the chain read, the version signed and the head written cannot interleave with another run.
        with locked(TrustKeyStore(cdir).controller_dir, "store-head", args["lock_timeout"]):
            listing = self._listing(args, now, vm_uuid=identity["uuid"])
            ledger = VmLedger.verify(identity["uuid"], listing["chain"], controller_roots(cdir, now))
            if not rules.record_here(ledger.placement, args["node_name"], only_if_here=args["only_if_here"]):
                return {"changed": False, "record": None, "reason": f"{ledger.describe()} places it on another node"}
            issued = signed(
                {
                    "statement": args["statement"],
                    "chain": listing["chain"],
                    # Only provisioning states the VM's policy; every other version keeps the recorded one.
                    "provision": args["provision"],
                    "policy": args["policy"] if args["provision"] else None,
                    "controller_dir": cdir,
                    "signing": args["signing"],
                    "sign_dir": args["sign_dir"],
                    "expires_days": args["expires_days"],
                    "max_days": args["max_days"],
                    "resign_days": args["resign_days"],
                    "allow_pending": False,
                    "now": args["now"],
                },
                False,
            )
            envelope, head = issued["envelope"], listing["head"]
            if issued["changed"]:
                stored = self._module(
                    MANIFEST_MODULE, {"state": "stored", "store_dir": args["store_dir"], "envelope": envelope}
                )
                stored = signed_head_after(stored, cdir, now, self._write_head(args))
                envelope, head = stored.get("envelope", envelope), stored["head"]
        if args["provision"]:
            reached("provision.recorded")
        record = {
            "envelope": envelope,
            "version": issued.get("version"),
            "head": head,
            "trust_roots": listing["trust_roots"],
            "floor": listing["floor"],
        }
        return {"changed": issued["changed"], "reason": issued.get("reason"), "record": record}

    def _write_head(self, args: dict):
        def write(head: dict) -> dict:
            return self._module(MANIFEST_MODULE, {"state": "stored", "store_dir": args["store_dir"], "head": head})

        return write

    def _cached(self, args: dict) -> dict:
        """Verify the stored manifest on the node and cache it there."""
        if self._check:
            return {"changed": False, "msg": "check mode: nothing recorded, nothing to cache"}
        if args["record"] is None:
            return {"changed": False, "msg": "nothing recorded on this node, nothing to cache"}
        _need(args, "identity")
        return self._module(
            PROVISION_MODULE,
            {
                **self._node_args(args),
                "step": "cached",
                "identity": args["identity"],
                "node_name": args["node_name"],
                "cluster": args["cluster"],
                "record": args["record"],
                "warn_days": args["warn_days"],
                "now": args["now"],
            },
        )


def _need(args: dict, *names: str) -> dict:
    missing = [n for n in names if not args.get(n)]
    if missing:
        raise InputError(f"step={args['step']} needs {', '.join(missing)}")
    return args


def _expanded(secrets) -> list:
    """The secrets asked for, each src with ~ expanded (files are read on the controller)."""
    if not isinstance(secrets, list):
        return secrets
    return [
        {**item, "src": os.path.expanduser(item["src"])} if isinstance(item, dict) and item.get("src") else item
        for item in secrets
    ]
