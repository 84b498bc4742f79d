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
from ansible_collections.ironclaw.sealed.plugins.module_utils._migration.plan import parse_fleet
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
# A fleet's node facts and Proxmox identities in one module run (the migration's read-only node half).
MIGRATION_MODULE = "ironclaw.sealed.ironclaw_migration"
# The node facts a step passes on (not the module's bookkeeping, nor what Proxmox said).
_NOT_FACTS = ("changed", "actions", "diff", "invocation", "vm", "pve_node", "failed", "msg")


class ActionModule(IronclawAction):
    argument_spec = staticmethod(argument_spec)

    def run_action(self, args: dict) -> dict:
        self.require_crypto()
        if args["step"] == "requested":
            return self._requested(args)
        if args["node_name"] is None:
            args["node_name"] = self._vars.get("inventory_hostname")
        if args["vms"] is not None:
            # A fleet: every step once for all the VMs of the run (identified parses the fleet's typed forms).
            return getattr(self, "_fleet_" + args["step"])(args)
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
        self._quote(args, str(pcrs) if pcrs else None, node)
        return {"changed": False, "identity": identity, "node": node}

    def _quote(self, args: dict, selection: str | None, node: dict) -> None:
        """DESIGN §8: the approval binds the values of a quote under this controller's nonce, checked at planned
        with the AK of the node's signed record, not the values the node read for its facts (one quote per run)."""
        if selection and args["backend"] == "tpm2":
            nonce = quoted_pcrs.new_nonce()
            answer = self._module(NODE_MODULE, {**self._node_args(args), **quoted_pcrs.quote_request(selection, nonce)})
            node["pcr_quote"] = {"selection": selection, "nonce": canonical.b64encode(nonce), "quote": answer["quote"]}

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
        self._plan_checks(args)
        with locked(
            TrustKeyStore(args["controller_dir"]).controller_dir, "store-head", args["lock_timeout"], shared=True
        ):
            listing = self._listing(args, now, vm_uuid=identity["uuid"], node_name=args["node_name"])
        decided = self._approved(args, identity, args["node"], listing)
        plan = {k: decided.get(k) for k in ("policy_key", "key_name", "policy", "approval")}
        return {"changed": decided["changed"], "plan": plan}

    def _plan_checks(self, args: dict) -> None:
        """The controller's trust root and signing keys, and the secrets asked for, before anything is signed."""
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

    def _approved(self, args: dict, identity: dict, node: dict, listing: dict, check: bool = False) -> dict:
        """The authority rules' decision for one VM (its chain and the node's record read from the store), and the
        unseal approval signed for the node; the VM's policy key is created on first use."""
        return policy_state(
            {
                "state": "approved",
                "vmid": identity["vmid"],
                "vm_uuid": identity["uuid"],
                "controller_dir": args["controller_dir"],
                "node": node,
                "node_name": args["node_name"],
                "node_record": listing["node_record"],
                "chain": listing["chain"],
                "provision": True,
                "pcrs": self._quoted_pcrs(args, node, listing, clock(args["now"])),
                "policy": args["policy"],
                "now": args["now"],
            },
            self._check or check,
        )

    def _quoted_pcrs(self, args: dict, node: dict, listing: dict, now) -> dict | None:
        """The PCR binding of the approval (the rule: quoted_pcrs.approval_binding); the node's signed record is
        verified once per run, not once per VM of a fleet."""
        record, envelope = None, listing["node_record"]
        if node.get("pcr_quote"):
            verified = vars(self).setdefault("_verified_records", [])
            record = next((rec for env, rec in verified if env == envelope), None)
            if record is None:
                roots = controller_roots(args["controller_dir"], now)
                record = verified_record(envelope, roots, args["node_name"], now)
                verified.append((envelope, record))
        return quoted_pcrs.approval_binding(node, record, args["node_name"])

    def _sealed(self, args: dict) -> dict:
        """Seal and test-unseal on the node in one module run; files are read here, in memory."""
        _need(args, "identity", "secrets")
        return self._seal_on_node(args, {key: args[key] for key in ("identity", "policy_key", "approval")})

    def _seal_on_node(self, args: dict, what: dict) -> dict:
        """The node's sealed step (one VM's ``identity``, or a fleet's ``vms``), with the secret files read here,
        in memory, for that one module run only."""
        secrets = _read_secrets(args["secrets"])
        out = self._module(
            PROVISION_MODULE,
            {
                **self._node_args(args),
                "step": "sealed",
                **what,
                "node_name": args["node_name"],
                "cluster": args["cluster"],
                "policy": args["policy"],
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
        # Exclusive: the chain read, the version signed and the head written cannot interleave with another run.
        with locked(TrustKeyStore(args["controller_dir"]).controller_dir, "store-head", args["lock_timeout"]):
            out = self._record_one(args, identity, args["statement"], now)
        if args["provision"] and out["record"] is not None:
            reached("provision.recorded")
        return out

    def _record_one(self, args: dict, identity: dict, statement: dict, now) -> dict:
        """Under the store-head lock: the VM's next manifest version signed and stored when `statement` changed
        its recorded state (or the newest nears expiry), then the store's head."""
        cdir = args["controller_dir"]
        listing = self._listing(args, now, vm_uuid=identity["uuid"])
        ledger = VmLedger.verify(identity["uuid"], listing["chain"], controller_roots(cdir, now))
        if not rules.record_here(ledger.placement, args["node_name"], only_if_here=args["only_if_here"]):
            return {"changed": False, "record": None, "reason": f"{ledger.describe()} places it on another node"}
        issued = signed(
            {
                "statement": statement,
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

    # -- a fleet: each step once for all the VMs of the run --------------------
    def _requested(self, args: dict) -> dict:
        """On the controller, before anything is read or locked: the node and the VMs of the run (ironclaw_vmid, or
        the fleet ironclaw_vms: a list of VMIDs or {vmid, vm_uuid} entries, or "VMID,VMID,...") checked, and the
        run's locks named: one per VM and the node's, taken before the node's facts are read (an approval is never
        signed for an epoch a concurrent run is about to bump)."""
        if not args["node_name"]:
            raise InputError(
                "Give the node and the VM: -e ironclaw_node=<inventory host> -e ironclaw_vmid=<VMID> "
                "(or the VMs: -e ironclaw_vms=<VMID>,<VMID>,...)"
            )
        # The playbook passes ironclaw_vms or [] (one VM, ironclaw_vmid, refused as step=identified refuses it).
        if args["vmid"] not in (None, ""):
            validate.vmid(args["vmid"])
            if args["vm_uuid"]:
                validate.vm_uuid(args["vm_uuid"])
        fleet = parse_fleet(args["vmid"], args["vm_uuid"], args["vms"] if args["vms"] != [] else None)
        if args["vm_ctime"] is not None and len(fleet) > 1:
            raise InputError(
                "ironclaw_vm_ctime is one VM's creation time: give it with ironclaw_vmid, not ironclaw_vms"
            )
        locks = [f"vm-{vm.vmid}" for vm in fleet] + [f"node-{args['node_name']}"]
        return {"changed": False, "vms": [vm.to_dict() for vm in fleet], "locks": locks}

    def _fleet_identified(self, args: dict) -> dict:
        """The fleet's identities (the RV(vms) of step=requested) and the node's facts, read in one module run on
        the node (Proxmox asked once per VM)."""
        fleet = parse_fleet(None, "", args["vms"])
        if args["vm_ctime"] is not None and len(fleet) > 1:
            raise InputError(
                "ironclaw_vm_ctime is one VM's creation time: give it with ironclaw_vmid, not ironclaw_vms"
            )
        pcrs = parse_policy(args["policy"]).pcrs
        selection = str(pcrs) if pcrs else None
        read = self._module(
            MIGRATION_MODULE,
            {
                **self._node_args(args),
                "step": "inspected",
                "vms": [vm.to_dict() for vm in fleet],
                "pcrs": [selection] if selection else [],
                "pve": args["pve"],
            },
        )
        facts = read["node"]
        node = {k: v for k, v in facts.items() if k not in _NOT_FACTS and k != "pcr_digests"}
        node["pcrs"] = facts["pcr_digests"].get(selection) if selection else None
        self._quote(args, selection, node)
        vms = []
        for vm in fleet:
            identity = rules.vm_identity(
                vm.vmid,
                node_name=args["node_name"],
                uuid=vm.vm_uuid,
                ctime=args["vm_ctime"],
                pve=read["vms"][str(vm.vmid)]["proxmox"] if args["pve"] else None,
                vm_nodes=args["vm_nodes"],
            )
            vms.append({"identity": identity})
        return {"changed": False, "vms": vms, "node": node}

    def _fleet_planned(self, args: dict) -> dict:
        """On the store host: every VM's chain and the node's record read once, each VM decided by the authority
        rules and its approval signed; a refusal of any VM signs nothing for the others after it."""
        vms, node = _fleet(args, "identity"), _need(args, "node")["node"]
        now = clock(args["now"])
        self._plan_checks(args)
        with locked(
            TrustKeyStore(args["controller_dir"]).controller_dir, "store-head", args["lock_timeout"], shared=True
        ):
            listings = [
                self._listing(args, now, vm_uuid=vm["identity"]["uuid"], node_name=args["node_name"]) for vm in vms
            ]
        # Every VM decided before anything is written: a refusal of one creates no policy key, signs nothing.
        if not self._check:
            for vm, listing in zip(vms, listings, strict=True):
                self._approved(args, vm["identity"], node, listing, check=True)
        planned, changed = [], False
        for vm, listing in zip(vms, listings, strict=True):
            decided = self._approved(args, vm["identity"], node, listing)
            changed |= bool(decided["changed"])
            plan = {k: decided.get(k) for k in ("policy_key", "key_name", "policy", "approval")}
            planned.append({"identity": vm["identity"], "plan": plan})
        return {"changed": changed, "vms": planned}

    def _fleet_sealed(self, args: dict) -> dict:
        """Every VM's secrets sealed and test-unsealed in one module run on the node (one backend context); the
        secret files are read here once, in memory."""
        vms = _fleet(args, "identity", "plan")
        _need(args, "secrets")
        entries = [
            {
                "identity": vm["identity"],
                "policy_key": vm["plan"]["policy_key"],
                "approval": vm["plan"]["approval"],
            }
            for vm in vms
        ]
        return self._seal_on_node(args, {"vms": entries})

    def _fleet_recorded(self, args: dict) -> dict:
        """On the store host, under one hold of the store-head lock: each VM's next manifest version when its sealed
        state changed, then the store's head."""
        if self._check:
            return {"changed": False, "msg": "check mode: nothing sealed yet, nothing recorded", "vms": []}
        vms = _fleet(args, "identity", "statement")
        _need(args, "store_dir")
        now = clock(args["now"])
        recorded, changed = [], False
        with locked(TrustKeyStore(args["controller_dir"]).controller_dir, "store-head", args["lock_timeout"]):
            for vm in vms:
                out = self._record_one(args, vm["identity"], vm["statement"], now)
                changed |= bool(out["changed"])
                recorded.append({"identity": vm["identity"], "record": out["record"], "reason": out.get("reason")})
        if args["provision"] and any(vm["record"] is not None for vm in recorded):
            reached("provision.recorded")
        return {"changed": changed, "vms": recorded}

    def _fleet_cached(self, args: dict) -> dict:
        """Every recorded manifest verified on the node and cached there, in one module run."""
        if self._check:
            return {"changed": False, "msg": "check mode: nothing recorded, nothing to cache"}
        entries = [vm for vm in _fleet(args, "identity") if vm.get("record") is not None]
        if not entries:
            return {"changed": False, "msg": "nothing recorded on this node, nothing to cache"}
        return self._module(
            PROVISION_MODULE,
            {
                **self._node_args(args),
                "step": "cached",
                "vms": [{"identity": vm["identity"], "record": vm["record"]} for vm in entries],
                "node_name": args["node_name"],
                "cluster": args["cluster"],
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


def _fleet(args: dict, *keys: str) -> list:
    """The `vms` a fleet step takes: the previous step's RV(vms), each entry with `keys`."""
    vms = args["vms"]
    if (
        not isinstance(vms, list)
        or not vms
        or not all(isinstance(vm, dict) and all(vm.get(k) for k in keys) for vm in vms)
    ):
        raise InputError(
            f"step={args['step']} needs vms: the vms result of the step before it, each with {', '.join(keys)}"
        )
    return vms


def _read_secrets(secrets) -> list:
    """The secrets asked for, each file read here, in memory, as base64 content (never a path on the node)."""
    out = []
    for item in rules.secret_request(_expanded(secrets), os.path.isfile):
        if item.get("src") is None:
            out.append({k: v for k, v in item.items() if k != "src" and v is not None})
            continue
        data = read_regular(item["src"], f"secret '{item['name']}' source file", MAX_PLAINTEXT_LEN)
        out.append({"name": item["name"], "content_base64": canonical.b64encode(data)})
        del data
    return out
