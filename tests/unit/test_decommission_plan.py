"""What a decommission decides (module_utils/_destroy/plan.py), once Jinja in the destroy role: the nodes of the
VM's verified history and the run's locks, what stops the run before anything is destroyed, the VMs that stay, the
receipt's locations, the summary, and why a run must be re-run."""

from __future__ import annotations

import types

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import InputError
from ansible_collections.ironclaw.sealed.plugins.module_utils._destroy import plan

UUID_A = "6f1c2a4e-9b7d-4c1a-8e2f-000000000201"
UUID_B = "6f1c2a4e-9b7d-4c1a-8e2f-000000000202"


def ledger(*nodes: str):
    """A stand-in for a verified VmLedger: its chain of (envelope, manifest), each manifest on one node."""
    chain = [(None, types.SimpleNamespace(node=types.SimpleNamespace(name=node))) for node in nodes]
    return types.SimpleNamespace(chain=chain)


def test_history_nodes_are_every_node_of_the_chain_once_in_order():
    assert plan.history_nodes(ledger("pve1", "pve2", "pve1", "pve3", "pve2")) == ["pve1", "pve2", "pve3"]
    assert plan.history_nodes(ledger()) == []


def test_run_locks_are_the_vms_and_one_per_history_node():
    assert plan.run_locks(200, ["pve1", "pve2"]) == ["vm-200", "node-pve1", "node-pve2"]
    with pytest.raises(InputError):
        plan.run_locks("two hundred", ["pve1"])


def test_a_node_that_refused_its_check_stops_the_run_naming_it_and_why():
    probes = {
        "pve1": {"status": "would-destroy"},
        "pve2": {"failed": True, "msg": "VM 200 is running on node pve2: nothing was destroyed."},
        "pve3": {"failed": True},
    }
    assert plan.refusals(probes) == [
        "pve2: VM 200 is running on node pve2: nothing was destroyed.",
        "pve3: the check failed without a message",
    ]


def test_unreachable_or_unprobed_nodes_are_not_refusals():
    probes = {"pve1": {"unreachable": True, "msg": "ssh: connect timed out"}, "pve2": None, "pve3": {"status": "x"}}
    assert plan.refusals(probes) == []


def test_survivors_are_the_other_vms_of_every_answering_node_once():
    probes = {
        "pve1": {"status": "would-destroy", "survivors": [{"vmid": 201, "vm_uuid": UUID_A}]},
        "pve2": {"status": "would-destroy", "survivors": [{"vmid": 202, "vm_uuid": UUID_B.upper()}]},
        "pve3": {"status": "would-destroy", "survivors": [{"vmid": 201, "vm_uuid": UUID_A}]},
        "pve4": {"unreachable": True},
        "pve5": None,
    }
    assert plan.survivor_uuids(probes) == [UUID_A, UUID_B]


def test_a_survivor_with_a_bad_uuid_is_refused():
    with pytest.raises(InputError):
        plan.survivor_uuids({"pve1": {"status": "x", "survivors": [{"vmid": 201, "vm_uuid": "../../etc"}]}})


def test_locations_say_unreachable_for_every_node_that_did_not_answer():
    evidence = {"epoch_before": 1, "epoch_after": 2, "files_removed": ["a", "b"]}
    results = {
        "pve1": {"status": "destroyed", "evidence": evidence},
        "pve2": {"unreachable": True, "msg": "timed out"},
        "pve3": {"failed": True, "msg": "TPM gone"},
    }
    assert plan.locations(["pve1", "pve2", "pve3", "pve4"], results) == [
        {"node": "pve1", "status": "destroyed", "evidence": evidence},
        {"node": "pve2", "status": "unreachable", "evidence": None},
        {"node": "pve3", "status": "unreachable", "evidence": None},
        {"node": "pve4", "status": "unreachable", "evidence": None},
    ]


def test_summary_names_each_node_the_key_the_tombstone_and_the_receipt():
    where = [
        {
            "node": "pve1",
            "status": "destroyed",
            "evidence": {"epoch_before": 1, "epoch_after": 2, "files_removed": ["a"]},
        },
        {"node": "pve2", "status": "unreachable", "evidence": None},
    ]
    assert plan.summary(200, UUID_A, where, "destroyed", 3, True) == (
        f"VM 200 ({UUID_A}): pve1 destroyed (epoch 1 -> 2, 1 file(s)); pve2 unreachable; policy key destroyed; "
        "tombstone v3; receipt stored"
    )
    assert plan.summary(200, UUID_A, where[1:], "would-destroy", None, False) == (
        f"VM 200 ({UUID_A}): pve2 unreachable; policy key would-destroy; no new receipt"
    )


def test_a_run_with_an_unreachable_node_must_be_re_run():
    where = [
        {"node": "pve1", "status": "destroyed", "evidence": {}},
        {"node": "pve2", "status": "unreachable", "evidence": None},
        {"node": "pve3", "status": "unreachable", "evidence": None},
    ]
    message = plan.unreachable_message(where)
    assert message.startswith("pve2, pve3 could not be reached: the VM's copies there are not revoked yet.")
    assert "Re-run ironclaw.sealed.decommission" in message
    assert plan.unreachable_message(where[:1]) is None
