#!/usr/bin/python
# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: ironclaw_migration
short_description: Migrate the sealed state of VMs between nodes, one step over every VM of the run
version_added: 0.1.0
description:
  - The migrate playbook is a few calls of this action, one per step. Each step reads what it needs once, decides on
    the controller through the collection's authority rules (grants and approvals are signed there, policy keys
    never leave it), and calls its node half once for every VM of the run, under one backend context.
  - Steps on the controller and the store host are C(requested) (the request and the trust root), C(planned) (every
    VM's chain, both nodes' signed records and the store's head, read once; where each VM's migration stands; every
    refusal before anything changes), C(recorded) (the next manifest version of each moved VM signed and stored, then
    the store's signed head) and C(finished) (the report).
  - Steps on the nodes (delegate the task to the node the previous step names in RV(run.hosts)) are C(inspected)
    (facts, Proxmox identities and what the node holds; changes nothing), C(exported) (on the source - each VM
    verified against its signed manifest, grants signed to the target's enrolled SRK, its keyslot duplicated to
    the target, then the VM stopped), C(imported) (on the target - bundles verified, imported,
    test-unsealed under approvals signed for this node), C(cached) (on the target - the recorded manifests verified
    and cached, bundles removed, the pre-start hookscript installed) and C(revoked) (on the source - only once the
    store records every move; the VMs moved in Proxmox when asked, the source copies destroyed under one epoch bump,
    the other VMs the ledger places there re-approved).
  - Settings come from the inventory, read by the action for the nodes it names (C(ironclaw_backend),
    C(ironclaw_tcti), C(ironclaw_state_dir), C(ironclaw_pve), C(ironclaw_pve_node), C(ironclaw_cluster), of the
    source and of the target; C(ironclaw_store_host), C(ironclaw_store_dir), C(ironclaw_controller_dir) of the
    source) and from the play's variables (C(ironclaw_vmid) or C(ironclaw_vms), C(ironclaw_vm_uuid),
    C(ironclaw_source), C(ironclaw_target), C(ironclaw_migration_window_minutes), C(ironclaw_stop_vm),
    C(ironclaw_shutdown_timeout), C(ironclaw_migrate_vm), C(ironclaw_signing), C(ironclaw_sign_dir),
    C(ironclaw_manifest_expires_days), C(ironclaw_manifest_max_days), C(ironclaw_manifest_resign_days),
    C(ironclaw_allow_tofu_targets)); see the premigration_teardown role's argument specification.
  - A tpm2 target must be attested - its signed node record proves its SRK lives in a genuine TPM (EK trusted by
    C(ca) or C(pin)). A target enrolled with C(tofu), or before attestation, is refused at C(planned) unless
    C(ironclaw_allow_tofu_targets=true).
  - The node half (this module) is called by the action; calling it alone is not supported.
options:
  step:
    description:
      - The step to run (see the description). C(verified) and C(approved) are node halves the action calls itself;
        C(approved) (new approvals for the VMs that stay on a node after its epoch bump) also serves
        M(ironclaw.sealed.ironclaw_destroy) with O(ironclaw.sealed.ironclaw_destroy#module:reapprove).
    type: str
    required: true
    choices: [requested, inspected, planned, verified, exported, imported, recorded, cached, revoked, approved]
  run:
    description: What the previous step returned (RV(run)); every step but C(requested) needs it.
    type: dict
  host:
    description: With O(step=inspected), the node to inspect, C(source) or C(target).
    type: str
    choices: [source, target]
  survivors:
    description:
      - With O(step=recorded) and O(step=cached), work on the source's re-approved VMs whose sealed state the
        epoch bump changed (software backend) instead of the moved ones.
    type: bool
    default: false
  now:
    description: The time to decide at (tests); defaults to the controller's clock.
    type: str
  vms:
    description: Set by the action for the node half - one entry per VM with what the step needs.
    type: list
    elements: dict
  trust_roots:
    description: Set by the action for the node half - the controller's trust roots.
    type: list
    elements: dict
  cluster:
    description: Set by the action for the node half - the node's cluster name.
    type: str
    default: default
  node_name:
    description: Set by the action for the node half - the node's inventory name.
    type: str
  head:
    description: Set by the action for the node half - the store's signed head.
    type: dict
  pve:
    description: Set by the action for the node half - whether the node is a Proxmox VE node.
    type: bool
    default: false
  stop_vm:
    description: Set by the action for the node half - whether a running VM may be shut down.
    type: bool
    default: true
  shutdown_timeout:
    description: Set by the action for the node half - seconds to wait for a shutdown before stopping.
    type: int
    default: 60
  pcrs:
    description:
      - Set by the action for the node half - PCR selections to read.
      - With O(quote_nonce), the selections the AK quotes (with O(step=inspected) or O(step=revoked)).
    type: list
    elements: str
    default: []
  quote_nonce:
    description:
      - Set by the action for the node half - the controller's fresh nonce (base64) for quoting O(pcrs) in this run
        (tpm2 backend); the controller verifies the quotes with the AK of the node's signed record.
    type: str
  hookscript:
    description: Set by the action for the node half - the pre-start hookscript to install.
    type: dict
  attach:
    description: Set by the action for the node half - VMs to attach the hookscript to.
    type: list
    elements: int
  move_vms:
    description: Set by the action for the node half - VMs to move in Proxmox (qm migrate, offline).
    type: list
    elements: int
  move_to:
    description: Set by the action for the node half - the Proxmox node to move them to.
    type: str
  describe:
    description: Set by the action for the node half - VMs whose sealed state to describe.
    type: list
    elements: dict
extends_documentation_fragment:
  - ironclaw.sealed.node
attributes:
  check_mode:
    description:
      - Steps up to C(planned) change nothing at any time; the later steps report what they would do (a bundle that
        was never exported cannot be imported in check mode).
    support: partial
    details:
      - C(exported) writes no bundle in check mode, so C(imported), C(recorded), C(cached) and C(revoked) only report
        what they would do.
  diff_mode:
    description: Nothing to diff.
    support: none
  idempotent:
    description: A step finds what an earlier, interrupted run did; a finished migration re-run changes nothing.
    support: full
  action:
    description: Every step runs as an action plugin on the controller, which calls the node half on the node.
    support: full
author:
  - ironclaw.sealed maintainers (@ironclaw)
"""

EXAMPLES = r"""
- name: Ask for the migration (the request and the trust root)
  ironclaw.sealed.ironclaw_migration:
    step: requested
  register: migration

- name: Inspect the source
  ironclaw.sealed.ironclaw_migration:
    step: inspected
    host: source
    run: "{{ migration.run }}"
  delegate_to: "{{ migration.run.hosts.source }}"
  register: migration
"""

RETURN = r"""
run:
  description: What the next step needs (the request, the hosts, what each step found and decided); public values only.
  returned: always
  type: dict
  contains:
    hosts:
      description: Where each step runs, C(store), C(source) and C(target).
      type: dict
report:
  description: One line per VM, in plain words, once the migration finished (O(step=finished)).
  returned: when O(step=finished)
  type: list
  elements: str
"""

import contextlib
import os

from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.argspec import ArgumentSpec, node_spec
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.hookscript_states import hookscript_state
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.options import failing_on_errors
from ansible_collections.ironclaw.sealed.plugins.module_utils._ansible.proxmox import (
    proxmox_cli,
    stopped_for_migration,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.lock import locked
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.clock import clock
from ansible_collections.ironclaw.sealed.plugins.module_utils._migration import node
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend

NODE_STEPS = ("inspected", "verified", "exported", "imported", "cached", "revoked", "approved")
STEPS = (
    "requested",
    "inspected",
    "planned",
    "verified",
    "exported",
    "imported",
    "recorded",
    "cached",
    "revoked",
    "approved",
)


@contextlib.contextmanager
def _locks(p: dict, exclusive: bool, check_mode: bool):
    """The node lock (exclusive for an epoch bump, else shared) and every VM's lock, taken in one order."""
    if check_mode and not os.path.isdir(p["state_dir"]):
        yield
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(locked(p["state_dir"], "node", p["lock_timeout"], shared=not exclusive))
        for vmid in sorted({int(v["vmid"]) for v in p["vms"] or []}):
            stack.enter_context(locked(p["state_dir"], f"vm-{vmid}", p["lock_timeout"]))
        yield


def _hookscript(p: dict, module, cli, *, vmid=None, node_id=None) -> dict:
    """The pre-start hookscript (ironclaw_hookscript's node side): the snippet and, with `node_id` (read from the
    backend already open: a second TPM connection would wait for the first), this node's record; or, with `vmid`,
    attached to that VM."""
    args = {
        "state": "present",
        "state_dir": p["state_dir"],
        "cluster": p["cluster"],
        "snippets_dir": p["hookscript"].get("snippets_dir") or "/var/lib/vz/snippets",
        "storage": p["hookscript"].get("storage") or "local",
        "file": p["hookscript"].get("file") or "ironclaw-prestart.pyz",
        "vmid": vmid,
        "pve": True,
        "node_name": node_id,
        "backend": None,
        "tcti": p["tcti"],
        "content": p["hookscript"]["content"],
    }
    return hookscript_state(args, module.check_mode, cli)


def _hooked(p: dict, module, cli, node_id=None) -> bool:
    """On Proxmox VE with a hookscript given: the snippet (and with `node_id` this node's record) installed, then
    attached to the VMs of O(attach). Whether anything changed."""
    if cli is None or not p["hookscript"]:
        return False
    changed = node_id is not None and _hookscript(p, module, cli, node_id=node_id)["changed"]
    for vmid in p["attach"] or []:
        changed |= _hookscript(p, module, cli, vmid=vmid)["changed"]
    return changed


def run(module) -> dict:
    p = module.params
    step, now = p["step"], clock(p["now"])
    if step not in NODE_STEPS:
        raise InputError(
            f"step={step} runs on the controller through the collection's action plugin; "
            "call the module by its full name ironclaw.sealed.ironclaw_migration"
        )
    vms = p["vms"] or []
    cli = proxmox_cli(module) if p["pve"] else None
    with open_backend(p["backend"], tcti=p["tcti"], state_dir=p["state_dir"]) as backend:
        if step == "inspected":
            proxmox = None
            if cli is not None:

                def proxmox(vmid):
                    return {"vm": cli.vm_info(vmid).to_result(), "pve_node": cli.node}

            return {
                "changed": False,
                **node.inspect(
                    backend, p["state_dir"], vms, selections=p["pcrs"], proxmox=proxmox, quote_nonce=p["quote_nonce"]
                ),
            }
        if step == "verified":
            with _locks(p, False, True):
                out = node.verify(p["state_dir"], vms, trust_roots=p["trust_roots"], cluster=p["cluster"], now=now)
            return {"changed": False, "vms": out}
        if step == "exported":
            prepare = None
            if cli is not None:

                def prepare(vmid, vm_uuid):
                    return stopped_for_migration(
                        cli,
                        vmid,
                        vm_uuid,
                        stop=p["stop_vm"],
                        timeout=p["shutdown_timeout"],
                        check_mode=module.check_mode,
                    )

            with _locks(p, False, module.check_mode):
                out = node.export(backend, p["state_dir"], vms, now=now, check_mode=module.check_mode, prepare=prepare)
            return {"changed": any(r["changed"] for r in out.values()), "vms": out}
        if step == "imported":
            hooked = _hooked(p, module, cli, node_id=backend.identity()[0].hex())
            with _locks(p, False, module.check_mode):
                out = node.import_(
                    backend,
                    p["state_dir"],
                    vms,
                    trust_roots=p["trust_roots"],
                    cluster=p["cluster"],
                    node_name=p["node_name"],
                    now=now,
                    check_mode=module.check_mode,
                )
            return {"changed": hooked or any(r["changed"] for r in out.values()), "vms": out}
        if step == "cached":
            with _locks(p, False, module.check_mode):
                return node.cache(
                    p["state_dir"],
                    vms,
                    trust_roots=p["trust_roots"],
                    cluster=p["cluster"],
                    head=p["head"],
                    now=now,
                    check_mode=module.check_mode,
                )
        if step == "revoked":
            changed = _hooked(p, module, cli)
            for vmid in (p["move_vms"] or []) if cli is not None else []:
                if not module.check_mode:
                    cli.migrate(vmid, p["move_to"])
                changed = True
            with _locks(p, True, module.check_mode):
                result = node.revoke(
                    backend,
                    p["state_dir"],
                    vms,
                    now=canonical.utc_timestamp(now),
                    check_mode=module.check_mode,
                    selections=p["pcrs"],
                    quote_nonce=p["quote_nonce"],
                )
            result["changed"] |= changed
            return result
        if step == "approved":
            with _locks(p, False, module.check_mode):
                result = node.approve(backend, p["state_dir"], vms, check_mode=module.check_mode)
            if p["describe"]:
                result["statements"] = node.describe(
                    p["state_dir"], p["describe"], cluster=p["cluster"], node_name=p["node_name"]
                )
            return result
    raise InputError(f"unknown step {step}")


def argument_spec() -> ArgumentSpec:
    """The node half's options (the action validates the controller steps' own arguments itself)."""
    spec = node_spec().update_argspec(
        step={"type": "str", "required": True, "choices": list(STEPS)},
        run={"type": "dict"},
        host={"type": "str", "choices": ["source", "target"]},
        survivors={"type": "bool", "default": False},
        # Bundles (key material wrapped to the target's TPM, never in the clear), grants and approvals (signed,
        # public) travel in entries: nothing secret, and no_log here would mask parts of the returned bundles.
        vms={"type": "list", "elements": "dict"},
        trust_roots={"type": "list", "elements": "dict"},
        cluster={"type": "str", "default": "default"},
        node_name={"type": "str"},
        head={"type": "dict"},
        pve={"type": "bool", "default": False},
        stop_vm={"type": "bool", "default": True},
        shutdown_timeout={"type": "int", "default": 60},
        pcrs={"type": "list", "elements": "str", "default": []},
        quote_nonce={"type": "str"},
        hookscript={"type": "dict", "no_log": True},
        attach={"type": "list", "elements": "int"},
        move_vms={"type": "list", "elements": "int"},
        move_to={"type": "str"},
        describe={"type": "list", "elements": "dict"},
        now={"type": "str"},
    )
    spec.required_if.extend(
        [
            ("step", "verified", ("trust_roots",)),
            ("step", "imported", ("trust_roots", "node_name")),
            ("step", "cached", ("trust_roots",)),
        ]
    )
    spec.required_by["move_vms"] = ("move_to",)
    return spec


def main():
    module = argument_spec().create_ansible_module()
    with failing_on_errors(module):
        result = run(module)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
