# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""After an epoch bump on a node: new approvals for the VMs the controller's ledger still places there.

One place for the migration's revocation and for decommission. The survivors' chains are read on the store host
beforehand (the node may not reach the store); the rules are ironclaw_policy's (``placed``, then ``approved``,
in process: policy keys never leave the controller); the node installs every approval in one call of the
ironclaw_migration module's node half (step ``approved``), which also describes the survivors whose sealed state
the bump changed (a software bump rewraps their keyslots) so that the caller records them again.

PCR values (DESIGN §8) come from a quote under a nonce this controller drew, verified with the AK of the node's
signed record before any approval is signed: the caller asks for it in the node run that bumps the epoch
(``quote_args``, ``quoted``); when that run did not quote what the approvals need, one more node run quotes every
selection at once (one per run, never per VM). Values the node merely reports are never bound.
"""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.action.ironclaw_policy import run_state as policy_decision
from ansible_collections.ironclaw.sealed.plugins.module_utils._attest import quoted_pcrs
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.ledger import VmLedger, controller_roots
from ansible_collections.ironclaw.sealed.plugins.module_utils._authority.node_record import verified_record
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import QuoteError
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical


def pcr_selections(chains: dict, controller_dir: str, now) -> list[str]:
    """The PCR selections the policies of the VMs in `chains` bind (each chain verified): what the node run that
    bumps the epoch quotes, before the survivors are known."""
    roots = controller_roots(controller_dir, now)
    found = {VmLedger.verify(uuid, chain, roots).policy.pcrs for uuid, chain in chains.items()}
    return sorted(sel for sel in found if sel)


def check_quotable(record_doc, selections: list[str], controller_dir: str, node_name: str, now) -> None:
    """Before anything changes: a node whose staying VMs bind PCRs (`selections`) must have a signed record that
    holds an AK, or their re-approval after the bump could bind nothing. InputError (no record) or QuoteError."""
    if not selections:
        return
    record = verified_record(record_doc, controller_roots(controller_dir, now), node_name, now)
    if record.attestation is None:
        raise QuoteError(
            f"{node_name} was enrolled before attestation: the VMs that stay there bind PCRs "
            f"({', '.join(selections)}), and after its epoch bump their new approvals could bind PCR values only "
            "from a quote verified with an AK its signed record does not hold; re-enroll it (ironclaw.sealed.enroll) "
            "first"
        )


def quote_args(selections: list[str]) -> tuple[bytes | None, dict]:
    """A fresh nonce and the node half's arguments that quote `selections` under it (none without selections)."""
    if not selections:
        return None, {}
    nonce = quoted_pcrs.new_nonce()
    return nonce, {"pcrs": list(selections), "quote_nonce": canonical.b64encode(nonce)}


def _bindings(node_call, selections, quoted, *, record_doc, controller_dir, node_name, now) -> dict:
    """Each selection's PCR binding, from quotes verified with the AK of the node's signed record (`record_doc`).
    `quoted` is (nonce, the node's quotes by selection) from the bump's run, or None; a missing selection is
    quoted, with every other, in one more node run under a new nonce. QuoteError before anything is signed."""
    record = verified_record(record_doc, controller_roots(controller_dir, now), node_name, now)
    nonce, quotes = quoted if quoted else (None, {})
    if nonce is None or any(sel not in (quotes or {}) for sel in selections):
        nonce, more = quote_args(selections)
        quotes = node_call("inspected", vms=[], pve=False, **more)["node"].get("quotes") or {}
    return {
        sel: quoted_pcrs.quoted_binding(record, sel, nonce, {"quote": quotes.get(sel)}, node_name) for sel in selections
    }


def reapprove(
    node_call,
    *,
    controller_dir: str,
    node_name: str,
    facts: dict,
    survivors: list[dict],
    chains: dict,
    backend: str,
    now,
    node_record=None,
    quoted=None,
) -> dict:
    """Approve, for the node's current epoch (`facts`), the `survivors` ({vmid, vm_uuid}) the ledger places on
    `node_name`. `node_call(step, **args)` runs the node half on the node. Returns the number approved, the VMs
    refused with the reason, and the statements of the survivors to record again (software backend), complete:
    each with the creation time and cluster its manifest records, so that they are recorded in one call.
    `node_record` is the node's signed record as the store holds it; `quoted` is (nonce, quotes by selection) from
    the node run that bumped the epoch (quote_args), or None."""
    stamp = canonical.utc_timestamp(now)
    unlisted = [s for s in survivors if s["vm_uuid"] not in chains]
    listed = [{"vmid": s["vmid"], "vm_uuid": s["vm_uuid"]} for s in survivors if s["vm_uuid"] in chains]
    refused = [
        f"VM {s['vmid']} ({s['vm_uuid']}) was sealed on {node_name} after this run began: it was not re-approved for "
        "the new epoch; run ironclaw.sealed.provision for it again"
        for s in unlisted
    ]
    out = {"approved": 0, "refused": refused, "statements": {}, "changed": False}
    if not listed:
        return out
    placed = policy_decision(
        {
            "state": "placed",
            "controller_dir": controller_dir,
            "node": facts,
            "node_name": node_name,
            "vms": listed,
            "chains": chains,
            "now": stamp,
        }
    )
    out["refused"] = [item["reason"] for item in placed["refused"]] + refused
    if not placed["placed"]:
        return out
    selections = sorted({vm["pcrs"] for vm in placed["placed"] if vm["pcrs"]})
    bound = {}
    if selections:
        bound = _bindings(
            node_call,
            selections,
            quoted,
            record_doc=node_record,
            controller_dir=controller_dir,
            node_name=node_name,
            now=now,
        )
    entries = []
    for vm in placed["placed"]:
        approved = policy_decision(
            {
                "state": "approved",
                "vmid": vm["vmid"],
                "vm_uuid": vm["vm_uuid"],
                "controller_dir": controller_dir,
                "node": facts,
                "node_name": node_name,
                "chain": chains[vm["vm_uuid"]],
                "pcrs": bound[vm["pcrs"]] if vm["pcrs"] else None,
                "now": stamp,
            }
        )
        entries.append({"vmid": vm["vmid"], "vm_uuid": vm["vm_uuid"], "approval": approved["approval"]})
    more = {}
    if backend == "software":
        # Each statement says again the creation time and cluster the VM's manifest records.
        more["describe"] = [
            {"vmid": vm["vmid"], "vm_uuid": vm["vm_uuid"], "vm_ctime": vm["vm_ctime"], "cluster": vm["cluster"]}
            for vm in placed["placed"]
        ]
    done = node_call("approved", vms=entries, node_name=node_name, **more)
    out.update(approved=len(entries), changed=done["changed"], statements=done.get("statements") or {})
    return out
