# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ironclaw_migration: each step of a migration is one call of this action, over every VM of the run.

A step reads what it needs once (the store's chains, the target's signed record, the node's facts), decides on the
controller through the authority rules (module_utils/_authority, module_utils/_migration/plan.py), signs what they
allow here (policy and manifest keys never leave the controller), and calls its node half (the ironclaw_migration
module) once for every VM. Each step returns ``run``, which the next step takes: the playbook only passes it on and
delegates each step to the host the run names. Refusals happen before anything changes, with the real cause.
"""

from __future__ import annotations

import base64
import os

from ansible_collections.ironclaw.sealed.plugins.action.ironclaw_policy import run_state as policy_state
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible import manifest_states
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest import quoted_pcrs
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.ledger import VmLedger, controller_roots
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.node_record import verified_record
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError, IronclawError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import ensure_dir, write_atomic
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.lock import locked
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.keystore import TrustKeyStore
from ansible_collections.ironclaw.sealed.plugins.module_utils._migration import plan
from ansible_collections.ironclaw.sealed.plugins.plugin_utils import faults, reapproval, store_host
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.action_module import IronclawAction
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.hookscript import build_hookscript
from ansible_collections.ironclaw.sealed.plugins.plugin_utils.manifest_controller import (
    _signing_keys,
    checked_listing,
    controller_root,
    signed,
    signed_head_after,
)

MODULE = "ironclaw.sealed.ironclaw_migration"
NODE_MODULE = "ironclaw.sealed.ironclaw_node"
STORE_MODULE = "ironclaw.sealed.ironclaw_manifest"
DEFAULT_CONTROLLER_DIR = "~/.local/share/ironclaw"
# A node's settings and their defaults (the roles' defaults, in one place for the action).
NODE_SETTINGS = {
    "backend": ("ironclaw_backend", "tpm2"),
    "tcti": ("ironclaw_tcti", None),
    "state_dir": ("ironclaw_state_dir", "/var/lib/ironclaw"),
    "pve": ("ironclaw_pve", True),
    "cluster": ("ironclaw_cluster", "default"),
    "pve_node": ("ironclaw_pve_node", None),
}
RUN_OPTIONS = {
    "window_minutes": ("ironclaw_migration_window_minutes", 60),
    "stop_vm": ("ironclaw_stop_vm", True),
    "shutdown_timeout": ("ironclaw_shutdown_timeout", 60),
    "migrate_vm": ("ironclaw_migrate_vm", False),
    "signing": ("ironclaw_signing", "online"),
    "sign_dir": ("ironclaw_sign_dir", None),
    "expires_days": ("ironclaw_manifest_expires_days", 90),
    "max_days": ("ironclaw_manifest_max_days", 90),
    "resign_days": ("ironclaw_manifest_resign_days", 30),
    "lock_timeout": ("ironclaw_lock_timeout", 300),
    "allow_tofu_targets": ("ironclaw_allow_tofu_targets", False),
}
STEPS = ("requested", "inspected", "planned", "exported", "imported", "recorded", "cached", "revoked")


def _bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _entry(vm: dict, **more) -> dict:
    return {"vmid": vm["vmid"], "vm_uuid": vm["vm_uuid"], "vm_ctime": vm["identity"]["ctime"], **more}


class ActionModule(IronclawAction):
    """Validates its own arguments (a step's needs differ); refusals become failures in IronclawAction.run."""

    def run_action(self, args: dict) -> dict:
        step = args.get("step")
        if step not in STEPS:
            raise InputError(f"step must be one of {', '.join(STEPS)}, not {step!r}")
        self.require_crypto()
        run = args.get("run")
        if step != "requested" and not isinstance(run, dict):
            raise InputError(f"step={step} needs run: the run result of the previous step")
        return getattr(self, "_" + step)(run, clock(args.get("now")))

    def failure_message(self, exc: IronclawError, args: dict) -> str:
        # A refusal before anything changed says so (the run carries whether something did).
        if (args.get("run") or {}).get("changed_nothing", True):
            return f"{exc} {plan.NOTHING_CHANGED}"
        return str(exc)

    # -- helpers -------------------------------------------------------------------------------------------------
    def _var(self, name: str, default=None):
        value = self._vars.get(name, default)
        return self._templar.template(value)

    def _host_var(self, host: str, name: str, default=None):
        """A node's setting: the task's own variables for the host the task runs for (role defaults and role
        variables count), its inventory variables for another host; else the default."""
        if host == self._vars.get("inventory_hostname") and name in self._vars:
            return self._templar.template(self._vars[name])
        hostvars = self._vars.get("hostvars", {})
        values = hostvars[host] if host in hostvars else {}
        return self._templar.template(values[name]) if name in values else default

    def _module(self, name: str, args: dict) -> dict:
        out = self._execute_module(module_name=name, module_args=args, task_vars=self._vars)
        if out.get("failed"):
            raise _ModuleFailed(out.get("msg", "the node step failed"), out.get("error"))
        return out

    def _store(self, args: dict) -> dict:
        """The store host's half (ironclaw_manifest), in process when the store host is the controller."""
        return store_host.call(self, STORE_MODULE, args, self._vars, self._task.check_mode)

    def _node_args(self, run: dict, role: str, step: str, **more) -> dict:
        node = run["nodes"][role]
        args = {
            "step": step,
            "backend": node["backend"],
            "state_dir": node["state_dir"],
            "cluster": node["cluster"],
            "pve": node["pve"],
        }
        if node["tcti"]:
            args["tcti"] = node["tcti"]
        args.update(more)
        return args

    def _hookscript(self, run: dict, role: str) -> dict:
        node = run["nodes"][role]
        content = build_hookscript({"state_dir": node["state_dir"], "cluster": node["cluster"]})
        return {"content": base64.b64encode(content).decode("ascii")}

    def _quoted_pcrs(self, run: dict, selections: list[str], now) -> dict:
        """Each selection's PCR values on the target, from a quote verified with the AK of its signed record (DESIGN
        §8): approvals never bind values the node merely reports."""
        host = run["hosts"]["target"]
        record = verified_record(run["target_record"], controller_roots(run["controller_dir"], now), host, now)
        node = run["nodes"]["target"]
        where = {key: node[key] for key in ("backend", "state_dir") if node[key] is not None}
        if node["tcti"]:
            where["tcti"] = node["tcti"]
        bound = {}
        for selection in selections:
            nonce = quoted_pcrs.new_nonce()
            answer = self._module(NODE_MODULE, {**where, **quoted_pcrs.quote_request(selection, nonce)})
            bound[selection] = quoted_pcrs.quoted_binding(record, selection, nonce, answer, host)
        return bound

    def _source_record(self, run: dict, stay: list[str], roots, now) -> dict | None:
        """The source's signed node record as the store holds it, verified here (None when no VM stays there or the
        source was never enrolled: the survivors' approvals then bind no quoted PCR value, and refuse those that
        need one)."""
        if not stay:
            return None
        source = run["hosts"]["source"]
        listing = self._store(
            {"state": "listed", "store_dir": run["store_dir"], "node_name": source},
        )
        with locked(run["controller_dir"], "store-head", run["options"]["lock_timeout"], shared=True):
            _root, listing = checked_listing(listing, run["controller_dir"], now)
        doc = listing["node_record"]
        if doc is not None:
            verified_record(doc, roots, source, now)
        return doc

    def _bundle_path(self, run: dict, vm: dict) -> str:
        return os.path.join(run["controller_dir"], "transfer", f"{vm['vmid']}-{vm['vm_uuid']}.bundle.json")

    # -- steps ---------------------------------------------------------------------------------------------------
    def _requested(self, _run, now) -> dict:
        """The request, the hosts and their settings, the trust root; the clock is read once, here."""
        inventory = set(self._vars.get("groups", {}).get("all", []))
        variables = {
            name: self._var(name)
            for name in ("ironclaw_vmid", "ironclaw_vms", "ironclaw_vm_uuid", "ironclaw_source", "ironclaw_target")
        }
        request = plan.parse_request(variables, inventory)
        options = {key: self._var(name, default) for key, (name, default) in RUN_OPTIONS.items()}
        for key in ("stop_vm", "migrate_vm", "allow_tofu_targets"):
            options[key] = _bool(options[key])
        # Allowing a tofu target is the operator's word for the run (-e, the play) or for that node (its inventory
        # variables): either says it; a role's default (false) does not take back what the inventory says.
        options["allow_tofu_targets"] = options["allow_tofu_targets"] or _bool(
            self._host_var(request.target, RUN_OPTIONS["allow_tofu_targets"][0], False)
        )
        for key in ("window_minutes", "shutdown_timeout", "expires_days", "max_days", "resign_days", "lock_timeout"):
            try:
                options[key] = int(options[key])
            except (TypeError, ValueError):
                raise InputError(f"{RUN_OPTIONS[key][0]} must be a whole number, not {options[key]!r}") from None
        nodes = {}
        for role, host in (("source", request.source), ("target", request.target)):
            settings = {key: self._host_var(host, name, default) for key, (name, default) in NODE_SETTINGS.items()}
            settings["pve"] = _bool(settings["pve"])
            settings["pve_node"] = settings["pve_node"] or host
            nodes[role] = {"name": host, **settings}
        controller_dir = os.path.expanduser(
            self._host_var(request.source, "ironclaw_controller_dir", DEFAULT_CONTROLLER_DIR)
        )
        store_dir = os.path.expanduser(
            self._host_var(request.source, "ironclaw_store_dir", os.path.join(controller_dir, "store"))
        )
        store_host = self._host_var(request.source, "ironclaw_store_host", "localhost")
        options["sign_dir"] = os.path.expanduser(options["sign_dir"] or os.path.join(controller_dir, "signing"))
        # The trust root and the signing keys are checked before anything changes.
        controller_root(controller_dir, now)
        if options["signing"] == "online":
            _signing_keys(TrustKeyStore(controller_dir), now)
        not_after = plan.window_end(now, options["window_minutes"])
        run = {
            "request": request.to_dict(),
            "hosts": {"store": store_host, "source": request.source, "target": request.target},
            "nodes": nodes,
            "controller_dir": controller_dir,
            "store_dir": store_dir,
            "options": options,
            "not_after": canonical.utc_timestamp(not_after),
            "locks": [f"node-{request.source}"] + [f"vm-{vm.vmid}" for vm in request.vms],
            "vms": {},
            "changed_nothing": True,
        }
        return {"changed": False, "run": run}

    def _inspected(self, run: dict, _now) -> dict:
        """What a node holds (changes nothing); on the source, each VM's identity is settled here."""
        role = self._task.args.get("host")
        if role not in ("source", "target"):
            raise InputError("step=inspected needs host: source or target")
        node = run["nodes"][role]
        if role == "source":
            vms = run["request"]["vms"]
        else:
            vms = [{"vmid": vm["vmid"], "vm_uuid": vm["vm_uuid"]} for vm in run["vms"].values()]
        found = self._module(
            MODULE, self._node_args(run, role, "inspected", vms=vms, pve=node["pve"] and role == "source")
        )
        run = {**run, role: {"facts": found["node"], "vms": found["vms"], "resident": found["resident"]}}
        if role == "source":
            nodes = [run["nodes"]["source"]["pve_node"], run["nodes"]["target"]["pve_node"]]
            settled = {}
            for given in run["request"]["vms"]:
                vm = plan.FleetVm(given["vmid"], given["vm_uuid"])
                identity = plan.settle_identity(
                    vm, pve=node["pve"], proxmox=found["vms"][str(vm.vmid)]["proxmox"], host=node["name"], nodes=nodes
                )
                settled[str(vm.vmid)] = {"vmid": vm.vmid, "vm_uuid": identity["uuid"], "identity": identity}
            run["vms"] = settled
        return {"changed": False, "run": run}

    def _planned(self, run: dict, now) -> dict:
        """Every chain and the target's record, read once under the store's head; where each VM stands; refusals."""
        if "source" not in run or "target" not in run:
            raise InputError("step=planned needs the source and the target inspected first")
        uuids = [vm["vm_uuid"] for vm in run["vms"].values()]
        # The source's other VMs: after its epoch bump they need new approvals, decided from their chains, read
        # here on the store host with the rest (the revocation runs on the source, which may not reach the store).
        stay = sorted({vm["vm_uuid"] for vm in run["source"]["resident"]} - set(uuids))
        listing = self._store(
            {
                "state": "listed",
                "store_dir": run["store_dir"],
                "vm_uuids": uuids + stay,
                "node_name": run["hosts"]["target"],
            },
        )
        with locked(run["controller_dir"], "store-head", run["options"]["lock_timeout"], shared=True):
            _root, listing = checked_listing(listing, run["controller_dir"], now)
        roots = controller_roots(run["controller_dir"], now)
        source, target = run["hosts"]["source"], run["hosts"]["target"]
        record_doc = listing["node_record"]
        record = None if record_doc is None else verified_record(record_doc, roots, target, now)
        # The source's signed record too when VMs stay there: their new approvals after its epoch bump bind PCR
        # values only from a quote verified with the AK it holds (DESIGN §8).
        source_record = self._source_record(run, stay, roots, now)
        stay_selections = reapproval.pcr_selections({u: listing["chains"][u] for u in stay}, run["controller_dir"], now)
        reapproval.check_quotable(source_record, stay_selections, run["controller_dir"], source, now)
        not_after = canonical.parse_timestamp(run["not_after"], "not_after")
        options = run["options"]
        vms = {}
        for key, vm in run["vms"].items():
            chain = listing["chains"][vm["vm_uuid"]]
            ledger = VmLedger.verify(vm["vm_uuid"], chain, roots)
            held = run["target"]["vms"][key]
            status = plan.status_of(
                ledger,
                vm["vmid"],
                source,
                target,
                target_keyslot=held["keyslot"],
                target_bundle=vm["vm_uuid"] in held["bundles"],
            )
            if status == "pending":
                plan.check_window(vm["vmid"], ledger.newest, not_after)
                plan.check_running(vm["identity"], pve=run["nodes"]["source"]["pve"], stop_vm=options["stop_vm"])
            newest = ledger.newest_ref
            vms[key] = {
                **vm,
                "status": status,
                "chain": chain,
                "floor": listing["floors"][vm["vm_uuid"]],
                "manifest": {"version": newest.version, "digest": newest.digest},
                "pcrs": ledger.policy.pcrs,
            }
        if any(vm["status"] != "recorded" for vm in vms.values()):
            plan.check_target(
                record,
                run["target"]["facts"],
                target=target,
                source_backend=run["source"]["facts"]["backend"],
                allow_tofu=options["allow_tofu_targets"],
            )
        return {
            "changed": False,
            "run": {
                **run,
                "vms": vms,
                "trust_roots": listing["trust_roots"],
                "target_record": record_doc,
                "source_record": source_record,
                "stay_chains": {uuid: listing["chains"][uuid] for uuid in stay},
                "head": listing["head"],
            },
        }

    def _exported(self, run: dict, now) -> dict:
        """On the source: verify against the manifests, sign the grants, export; the bundles wait on the controller."""
        pending = [vm for vm in run["vms"].values() if vm["status"] == "pending"]
        if not pending:
            return {"changed": False, "run": run}
        source, target = run["hosts"]["source"], run["hosts"]["target"]
        entries = [_entry(vm, envelope=vm["chain"][-1], floor=vm["floor"]) for vm in pending]
        self._module(MODULE, self._node_args(run, "source", "verified", vms=entries, trust_roots=run["trust_roots"]))
        changed = False
        migration = {"source": source, "target": target, "not_after": run["not_after"]}
        for vm, entry in zip(pending, entries, strict=True):
            granted = policy_state(
                {
                    "state": "granted",
                    "vmid": vm["vmid"],
                    "vm_uuid": vm["vm_uuid"],
                    "controller_dir": run["controller_dir"],
                    "node": run["source"]["facts"],
                    "node_name": source,
                    "chain": vm["chain"],
                    "target": run["target_record"],
                    "target_name": target,
                    "not_after": run["not_after"],
                    "now": canonical.utc_timestamp(now),
                },
                self._task.check_mode,
            )
            changed |= granted["changed"]
            entry.update(grant=granted["grant"], migration=migration, manifest=vm["manifest"])
        options = run["options"]
        exported = self._module(
            MODULE,
            self._node_args(
                run,
                "source",
                "exported",
                vms=entries,
                stop_vm=options["stop_vm"],
                shutdown_timeout=options["shutdown_timeout"],
            ),
        )
        faults.reached("migration.exported")
        vms = dict(run["vms"])
        for vm in pending:
            done = exported["vms"][str(vm["vmid"])]
            bundle = done.pop("bundle", None)
            if bundle is not None:
                path = self._bundle_path(run, vm)
                ensure_dir(os.path.dirname(path), 0o700)
                write_atomic(path, bundle.encode("utf-8"), 0o600)
            vms[str(vm["vmid"])] = {
                **vm,
                "status": vm["status"] if self._task.check_mode else "exported",
                "exported": {k: v for k, v in done.items() if k != "path"},
            }
        faults.reached("migration.fetched")
        return {"changed": changed or exported["changed"], "run": {**run, "vms": vms, "changed_nothing": False}}

    def _imported(self, run: dict, now) -> dict:
        """On the target: approvals signed for it, the bundles imported and test-unsealed, statements to record."""
        moving = [vm for vm in run["vms"].values() if vm["status"] in ("pending", "exported", "imported")]
        if not moving:
            return {"changed": False, "run": run}
        if self._task.check_mode:
            # Nothing was exported in check mode: there is nothing to import yet.
            return {"changed": True, "run": run, "msg": f"would import {len(moving)} VM(s)"}
        target = run["hosts"]["target"]
        facts = run["target"]["facts"]
        selections = sorted({vm["pcrs"] for vm in moving if vm["pcrs"]})
        if selections:
            facts = {**facts, "pcr_digests": self._quoted_pcrs(run, selections, now)}
        entries = []
        for vm in moving:
            approved = policy_state(
                {
                    "state": "approved",
                    "vmid": vm["vmid"],
                    "vm_uuid": vm["vm_uuid"],
                    "controller_dir": run["controller_dir"],
                    "node": facts,
                    "node_name": target,
                    "node_record": run["target_record"],
                    "chain": vm["chain"],
                    "pcrs": facts["pcr_digests"].get(vm["pcrs"]) if vm["pcrs"] else None,
                    "now": canonical.utc_timestamp(now),
                }
            )
            entry = _entry(vm, envelope=vm["chain"][-1], floor=vm["floor"], approval=approved["approval"])
            path = self._bundle_path(run, vm)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as handle:
                    entry["bundle"] = handle.read()
            entries.append(entry)
        more = {}
        node = run["nodes"]["target"]
        if node["pve"]:
            # The pre-start hookscript first (after every check passed, before the VM can get here), attached to
            # the VMs whose configuration is here already.
            more["hookscript"] = self._hookscript(run, "target")
            more["attach"] = [vm["vmid"] for vm in moving if vm["identity"]["node"] == node["pve_node"]]
        imported = self._module(
            MODULE,
            self._node_args(
                run, "target", "imported", vms=entries, trust_roots=run["trust_roots"], node_name=target, **more
            ),
        )
        faults.reached("migration.imported")
        vms = dict(run["vms"])
        for vm in moving:
            done = imported["vms"][str(vm["vmid"])]
            vms[str(vm["vmid"])] = {
                **vm,
                "imported": {k: done.get(k) for k in ("status", "keyslot_id", "replaced", "migration")},
                "statement": done.get("statement"),
            }
        return {"changed": imported["changed"], "run": {**run, "vms": vms, "changed_nothing": False}}

    def _sign_and_store(self, run: dict, now, items: list[tuple[dict, dict]]) -> tuple[dict, bool]:
        """Sign the next version for each (vm, statement) that differs from the newest, store them, sign one head."""
        options = run["options"]
        recorded, last, touched = {}, None, []
        with locked(run["controller_dir"], "store-head", options["lock_timeout"]):
            for vm, statement in items:
                signed_out = signed(
                    {
                        **manifest_states.argument_spec().defaults(),
                        "state": "signed",
                        "statement": statement,
                        "chain": vm["chain"],
                        "controller_dir": run["controller_dir"],
                        "signing": options["signing"],
                        "sign_dir": options["sign_dir"],
                        "expires_days": options["expires_days"],
                        "max_days": options["max_days"],
                        "resign_days": options["resign_days"],
                        "now": canonical.utc_timestamp(now),
                    },
                    self._task.check_mode,
                )
                if not signed_out["changed"] or self._task.check_mode:
                    continue
                last = self._store(
                    {"state": "stored", "store_dir": run["store_dir"], "envelope": signed_out["envelope"]}
                )
                touched.extend(last["touched"])
                recorded[str(vm["vmid"])] = last["envelope"]
            head = run["head"]
            if last is not None:

                def write_head(envelope):
                    return self._store({"state": "stored", "store_dir": run["store_dir"], "head": envelope})

                head = signed_head_after({**last, "touched": touched}, run["controller_dir"], now, write_head)["head"]
        return {"recorded": recorded, "head": head}, bool(recorded)

    def _recorded(self, run: dict, now) -> dict:
        """On the store host: the next manifest version of each moved VM (or changed survivor), then one head."""
        survivors = bool(self._task.args.get("survivors"))
        group = run.get("survivors", {}) if survivors else run["vms"]
        items = [(vm, vm["statement"]) for vm in group.values() if vm.get("statement")]
        if not items:
            return {"changed": False, "run": run}
        done, changed = self._sign_and_store(run, now, items)
        faults.reached("migration.recorded" if not survivors else "migration.survivors_recorded")
        updated = {}
        for key, vm in group.items():
            envelope = done["recorded"].get(key)
            chain = vm["chain"] + [envelope] if envelope is not None else vm["chain"]
            updated[key] = {**vm, "chain": chain, "statement": None}
        name = "survivors" if survivors else "vms"
        return {"changed": changed, "run": {**run, name: updated, "head": done["head"], "changed_nothing": False}}

    def _cached(self, run: dict, _now) -> dict:
        """On the node that now holds the VMs: the recorded manifests verified and cached, bundles removed."""
        if self._task.check_mode:
            return {"changed": False, "run": run}
        survivors = bool(self._task.args.get("survivors"))
        role = "source" if survivors else "target"
        group = run.get("survivors", {}) if survivors else run["vms"]
        if not group:
            return {"changed": False, "run": run}
        entries = [_entry(vm, envelope=vm["chain"][-1]) for vm in group.values()]
        done = self._module(
            MODULE, self._node_args(run, role, "cached", vms=entries, trust_roots=run["trust_roots"], head=run["head"])
        )
        return {"changed": done["changed"], "run": run}

    def _revoked(self, run: dict, now) -> dict:
        """On the source, once the store records every move: move the VMs in Proxmox when asked, destroy the source
        copies under one epoch bump, re-approve the VMs the ledger still places here."""
        source, target = run["hosts"]["source"], run["hosts"]["target"]
        if self._task.check_mode:
            report = [
                f"VM {vm['vmid']}: {vm['status']}; would migrate it from {source} to {target} and revoke the copy here"
                if vm["status"] != "recorded"
                else f"VM {vm['vmid']} was already migrated from {source} to {target}: would revoke the copy here"
                for vm in run["vms"].values()
            ]
            return {"changed": True, "run": {**run, "survivors": {}, "report": report}}
        roots = controller_roots(run["controller_dir"], now)
        versions = {}
        for key, vm in run["vms"].items():
            ledger = VmLedger.verify(vm["vm_uuid"], vm["chain"], roots)
            versions[key] = plan.recorded_version(ledger, vm["vmid"], source, target)
        node = run["nodes"]["source"]
        more = {}
        if node["pve"]:
            target_pve = run["nodes"]["target"]["pve_node"]
            here = [vm for vm in run["vms"].values() if vm["identity"]["node"] == node["pve_node"]]
            more["hookscript"] = self._hookscript(run, "source")
            more["attach"] = [vm["vmid"] for vm in here]
            if run["options"]["migrate_vm"] and here:
                more.update(move_vms=[vm["vmid"] for vm in here], move_to=target_pve)
        # The other VMs sealed here: their chains are read now (after the bump they need new approvals).
        entries = [{"vmid": vm["vmid"], "vm_uuid": vm["vm_uuid"]} for vm in run["vms"].values()]
        # The survivors' PCR selections are quoted in this same run, right after the bump, under a fresh nonce.
        nonce, quote = reapproval.quote_args(
            reapproval.pcr_selections(run.get("stay_chains") or {}, run["controller_dir"], now)
            if run["nodes"]["source"]["backend"] == "tpm2"
            else []
        )
        revoked = self._module(MODULE, self._node_args(run, "source", "revoked", vms=entries, **more, **quote))
        faults.reached("migration.revoked")
        for vm in run["vms"].values():
            path = self._bundle_path(run, vm)
            if os.path.lexists(path) and not self._task.check_mode:
                os.unlink(path)
        report_run = {**run, "changed_nothing": False}
        survivors = {}
        approved_count = 0
        # Also after "already destroyed": a run cut short after the bump must still re-approve (the node call then
        # changes nothing where the approvals are current).
        if revoked["survivors"]:
            quotes = revoked["node"].get("quotes") if nonce is not None else None
            survivors, approved_count = self._reapprove(report_run, revoked, now, (nonce, quotes) if quotes else None)
        results = {r["vmid"]: r for r in revoked["results"]}
        report = []
        for key, vm in run["vms"].items():
            done = results[vm["vmid"]]
            if done["status"] == "destroyed":
                report.append(
                    f"VM {vm['vmid']} migrated: its sealed state is on {target} (manifest v{versions[key]}), the copy "
                    f"on {source} was revoked (epoch {done['evidence']['epoch_after']}) and {approved_count} other "
                    "VM(s) here were re-approved."
                )
            else:
                report.append(
                    f"VM {vm['vmid']} was already migrated from {source} to {target} (manifest v{versions[key]}) and "
                    "the copy here revoked: nothing to do."
                )
        report.extend(revoked.get("refused_reports", []))
        return {
            "changed": revoked["changed"],
            "run": {**report_run, "survivors": survivors, "report": report},
            "unusable": revoked.get("unusable", []),
        }

    def _reapprove(self, run: dict, revoked: dict, now, quoted=None) -> tuple[dict, int]:
        """New approvals for the survivors the ledger places on the source (one node call for all of them)."""
        source = run["hosts"]["source"]
        chains = run["stay_chains"]

        def node_call(step, **args):
            return self._module(MODULE, self._node_args(run, "source", step, **args))

        done = reapproval.reapprove(
            node_call,
            controller_dir=run["controller_dir"],
            node_name=source,
            facts={key: value for key, value in revoked["node"].items() if key != "quotes"},
            survivors=revoked["survivors"],
            chains=chains,
            backend=run["nodes"]["source"]["backend"],
            now=now,
            node_record=run.get("source_record"),
            quoted=quoted,
        )
        faults.reached("migration.reapproved")
        revoked["refused_reports"] = done["refused"]
        survivors = {}
        for key, statement in done["statements"].items():
            uuid = statement["subject"]["vm_uuid"]
            survivors[key] = {
                "vmid": statement["subject"]["vmid"],
                "vm_uuid": uuid,
                "identity": {"ctime": statement["subject"]["vm_ctime"], "node": source},
                "chain": chains[uuid],
                "statement": statement,
            }
        return survivors, done["approved"]


class _ModuleFailed(IronclawError):
    """A node or store half failed; its message is the step's."""

    def __init__(self, msg: str, error: str | None):
        super().__init__(msg)
        self.error = error
