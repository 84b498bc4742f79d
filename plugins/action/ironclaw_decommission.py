# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_decommission: the controller's steps of a decommission, each one task on the store host.

``planned`` settles the VM and the nodes of its verified history; ``checked`` stops the run when a node's check
refused and reads the chains of the VMs that stay on those nodes; ``finished`` destroys the policy key, ends the chain
with a signed tombstone, signs and stores the receipt and says what happened. The nodes' own work is
ironclaw_destroy state=absent (the destroy role's probe and node entry points); this action reads their results from
the play (each node's registered ``__destroy_probe`` and ``__destroy_node_result``). Store calls run in process when
the store host is the controller (plugin_utils/store_host). Every decision is in module_utils/_destroy/plan.py.
"""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.action.ironclaw_destroy import receipted, revoked
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible import manifest_states
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.argspec import ArgumentSpec
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.ledger import VmLedger, controller_roots
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    IncompleteError,
    InputError,
    RefusedError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.lock import locked
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy import plan
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.plugin_utils import reapproval, store_host
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.action_module import IronclawAction
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.manifest_controller import (
    checked_listing,
    signed,
    signed_head_after,
)

STORE_MODULE = "ironclaw.sealed.ironclaw_manifest"


def argument_spec() -> ArgumentSpec:
    """ironclaw_decommission's options (documented in plugins/modules/ironclaw_decommission.py)."""
    return ArgumentSpec(
        {
            "step": {"type": "str", "required": True, "choices": ["planned", "checked", "finished"]},
            "vmid": {"type": "int"},
            "vm_uuid": {"type": "str"},
            "store_dir": {"type": "path"},
            "controller_dir": {"type": "path", "default": "~/.local/share/ironclaw"},
            "lock_timeout": {"type": "float", "default": 120},
            "run": {"type": "dict"},
            "cluster": {"type": "str", "default": "default"},
            "signing": {"type": "str", "default": "online", "choices": ["online", "offline"]},
            "sign_dir": {"type": "path"},
            "expires_days": {"type": "int", "default": 90},
            "max_days": {"type": "int", "default": 90},
            "now": {"type": "str"},
        },
        required_if=[
            ("step", "planned", ("vmid", "store_dir")),
            ("step", "checked", ("run",)),
            ("step", "finished", ("run",)),
        ],
    )


# What each node's destroy role entry point registers (probe, node): read here from the play.
PROBE_VAR = "__destroy_probe"
NODE_RESULT_VAR = "__destroy_node_result"


class ActionModule(IronclawAction):
    argument_spec = staticmethod(argument_spec)

    def run_action(self, args: dict) -> dict:
        self.require_crypto()
        return getattr(self, "_" + args["step"])(args, clock(args["now"]))

    # -- helpers -------------------------------------------------------------------------------------------------
    def _store(self, args: dict) -> dict:
        return store_host.call(self, STORE_MODULE, args, self._vars, self._task.check_mode)

    def _listed(self, run: dict, now, **what) -> dict:
        """The store's listing, accepted by the controller (head, view, its own trust roots) under a shared lock."""
        listing = self._store({"state": "listed", "store_dir": run["store_dir"], **what})
        with locked(run["controller_dir"], "store-head", run["lock_timeout"], shared=True):
            return checked_listing(listing, run["controller_dir"], now)[1]

    def _stored(self, run: dict, now, **what) -> dict:
        """Store one document, then sign the store's next head (under the controller's head lock)."""
        with locked(run["controller_dir"], "store-head", run["lock_timeout"]):
            out = self._store({"state": "stored", "store_dir": run["store_dir"], **what})
            if "view" not in out:
                return out

            def write_head(envelope):
                return self._store({"state": "stored", "store_dir": run["store_dir"], "head": envelope})

            return signed_head_after(out, run["controller_dir"], now, write_head)

    def _from_nodes(self, run: dict, name: str) -> dict:
        """Each history node's registered `name` in this play, or None where the node is not in the inventory or
        did not register it."""
        hostvars = self._vars.get("hostvars", {})
        found = {}
        for node in run["nodes"]:
            values = hostvars[node] if node in hostvars else {}
            found[node] = self._templar.template(values[name]) if name in values else None
        return found

    @staticmethod
    def _run(args: dict) -> dict:
        run = args["run"]
        for key in ("vmid", "vm_uuid", "nodes", "store_dir", "controller_dir", "chain"):
            if key not in run:
                raise InputError(f"step={args['step']} needs run: the run result of step=planned (it has no {key})")
        return run

    # -- steps ---------------------------------------------------------------------------------------------------
    def _planned(self, args: dict, now) -> dict:
        """The VM (the only one the store knows under the VMID, or the uuid given) and its verified history."""
        run = {
            "vmid": args["vmid"],
            "store_dir": args["store_dir"],
            "controller_dir": args["controller_dir"],
            "lock_timeout": args["lock_timeout"],
        }
        found = self._listed(run, now, vmid=args["vmid"])
        vm_uuid = plan.choose_vm(args["vmid"], args["vm_uuid"], found["vms"], args["store_dir"])
        listing = self._listed(run, now, vm_uuid=vm_uuid)
        # The nodes come from the chain as the controller verifies it, not from the store's own summary.
        ledger = VmLedger.verify(vm_uuid, listing["chain"], controller_roots(args["controller_dir"], now))
        nodes = plan.history_nodes(ledger)
        inventory = set(self._vars.get("groups", {}).get("all", []))
        unknown = [node for node in nodes if node not in inventory]
        report = f"VM {args['vmid']} ({vm_uuid}): {len(ledger.chain)} manifest version(s), nodes {', '.join(nodes)}" + (
            f" (not in the inventory: {', '.join(unknown)})" if unknown else ""
        )
        run.update(
            vm_uuid=vm_uuid,
            nodes=nodes,
            unknown_nodes=unknown,
            locks=plan.run_locks(args["vmid"], nodes),
            chain=listing["chain"],
            tombstone_statement=listing["tombstone_statement"],
            report=report,
        )
        return {"changed": False, "run": run, "msg": report}

    def _checked(self, args: dict, now) -> dict:
        """Stop here (nothing destroyed) when a reachable node's check refused; else read the chains of the VMs
        that stay on the history's nodes, for their re-approval after the epoch bumps."""
        run = self._run(args)
        probes = self._from_nodes(run, PROBE_VAR)
        refused = plan.refusals(probes)
        if refused:
            raise RefusedError("Nothing was destroyed. " + " ".join(refused))
        stay = plan.survivor_uuids(probes)
        chains = self._listed(run, now, vm_uuids=stay)["chains"] if stay else {}
        # Each node's signed record (verified against the head here; the destroy task verifies it again): the
        # survivors' new approvals bind PCR values only from a quote checked with the AK it holds (DESIGN §8).
        # A node whose staying VMs bind PCRs and whose record holds no AK is refused here, before anything changes.
        records = {}
        for node in run["nodes"] if stay else ():
            records[node] = self._listed(run, now, node_name=node).get("node_record")
            mine = plan.survivor_uuids({node: probes.get(node)})
            selections = reapproval.pcr_selections({u: chains[u] for u in mine}, run["controller_dir"], now)
            reapproval.check_quotable(records[node], selections, run["controller_dir"], node, now)
        return {"changed": False, "run": {**run, "survivor_chains": chains, "node_records": records}}

    def _finished(self, args: dict, now) -> dict:
        """The policy key destroyed, the chain ended by a signed tombstone, the receipt signed and stored; fails
        (after doing all of that) while a node is unreachable or a signature waits for the offline machine."""
        run = self._run(args)
        check = bool(self._task.check_mode)
        where = plan.locations(run["nodes"], self._from_nodes(run, NODE_RESULT_VAR))
        at = canonical.utc_timestamp(now)
        vm = {"vmid": run["vmid"], "vm_uuid": run["vm_uuid"], "controller_dir": run["controller_dir"], "now": at}
        key = revoked({**vm, "vms": None}, check)
        changed = key["changed"]
        common = {"signing": args["signing"], "sign_dir": args["sign_dir"]}
        if run["tombstone_statement"] is not None and not check:
            tombstone = signed(
                {
                    **manifest_states.argument_spec().defaults(),
                    **common,
                    "state": "signed",
                    "statement": run["tombstone_statement"],
                    "chain": run["chain"],
                    "controller_dir": run["controller_dir"],
                    "expires_days": args["expires_days"],
                    "max_days": args["max_days"],
                    "allow_pending": True,
                    "now": at,
                },
                False,
            )
            if tombstone["envelope"] is not None:
                changed |= self._stored(run, now, envelope=tombstone["envelope"])["changed"]
        end = self._listed(run, now, vm_uuid=run["vm_uuid"])
        receipt = {"receipts": [], "pending": []}
        if not check:
            receipt = receipted(
                {
                    **vm,
                    **common,
                    "vms": None,
                    "cluster": args["cluster"],
                    "locations": where,
                    "policy_key": key["policy_key"],
                    "chain_end": end["latest"],
                    "stored_receipts": end["receipts"],
                },
                False,
            )
            changed |= receipt["changed"]
            for envelope in receipt["receipts"]:
                changed |= self._stored(run, now, vm_uuid=run["vm_uuid"], receipt=envelope)["changed"]
        floor = end.get("floor") or {}
        line = plan.summary(
            run["vmid"],
            run["vm_uuid"],
            where,
            key["policy_key"]["status"],
            floor.get("version") if floor.get("destroyed") else None,
            bool(receipt["receipts"]),
        )
        out = {"changed": changed, "summary": line, "locations": where, "pending": receipt["pending"], "msg": line}
        waiting = receipt.get("msg") if receipt["pending"] else None
        gone = plan.unreachable_message(where)
        if waiting or gone:
            out.update(failed=True, msg=f"{line}. {waiting or gone}", error=IncompleteError.__name__)
        return out
