"""The collection's playbooks end to end: init, enroll, provision, verify and unsealing.

Two nodes on localhost cover both node interpreters: nodeA seals to a swtpm
with Debian's python3-tpm2-pytss 1.2, nodeB uses the software backend with the
PyPI releases of the test interpreter. Each scenario that changes a VM uses
its own VMID on the module's lab, so the scenarios do not depend on each
other's order.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import sys
from pathlib import Path

import pytest
from playbook_rig import (
    DEBIAN_PYTHON,
    Lab,
    Node,
    blob_header,
    changed_tasks,
    enrolled_lab,
    leak_markers,
    parse_recap,
    task_count,
    task_result,
    vm_uuid_of,
)

from rig.swtpm import free_port_pair

pytestmark = pytest.mark.swtpm

NODES = ["nodeA", "nodeB"]
SECRET_NAMES = ["api-token", "db-pass", "master-key"]
BLOB_FORMAT = "ironclaw-sealed-blob/1"
NONCE_LEN = 12

SEAL_TASK = "Seal the secrets and prove every one unseals"
SIGN_TASK = "Check the request against the store and sign an unseal approval per VM (on the controller)"
# The manifest steps that change something when the sealed state changed.
PUBLISH_TASKS = [
    "Sign and store the next manifest version when the sealed state changed",
    "Verify the manifest on the node and cache it there",
]
STORE_TASK = PUBLISH_TASKS[0]

VM_MAIN = 100
VM_CHANGED = 101
VM_TAMPERED = 102
VM_VERBOSE = 103
VM_CONCURRENT = 104
VM_BAD_TCTI = 105
VM_BAD_POLICY = 106
VM_BAD_SRC = 107
VM_NOT_ENROLLED = 108
VM_BAD_UUID = 109
VM_CEILING = 110
VM_ROLE = 113
# A run killed at each fault point of the provision steps (plugins/plugin_utils/faults.py), one VM each.
VM_FAULTS = {"provision.sealed": 111, "provision.recorded": 112}
VM_CHECK = 200
# A fleet provisioned in one run (ironclaw_vms).
FLEET = list(range(320, 330))
VM_FLEET_ONE = 330
VM_PLACED_ELSEWHERE = 350
VM_LISTED_WITH_IT = 351
# TPM commands an extra VM of a fleet may cost (15 measured; one VM alone 24): its keyslot and its test-unseal;
# the node's facts and the backend's context are paid once per run.
PROVISION_TPM_COMMANDS_PER_EXTRA_VM = 16
# The provision playbook's ceiling: request check, lock, five steps, release.
PROVISION_MAX_TASKS = 8


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def provisioned(enrolled: Lab):
    """VM 100 provisioned and verified on both nodes; results keyed ("provision" | "verify", node)."""
    for node in NODES:
        enrolled.results["provision", node] = enrolled.provision(node, VM_MAIN)
        enrolled.results["verify", node] = enrolled.verify(node, VM_MAIN)
    return enrolled


# -- init and enroll -------------------------------------------------------------


def test_init_creates_private_controller_dirs(enrolled: Lab):
    for sub in ("", "policy-keys", "store", "store/nodes"):
        path = enrolled.controller_dir / sub
        assert path.is_dir(), f"init did not create {path}"
        assert mode(path) == 0o700, f"{path} is {mode(path):o}"
    assert enrolled.results["init"].recap["localhost"]["failed"] == 0


def test_enroll_records_each_node(enrolled: Lab):
    recap = enrolled.results["enroll"].recap
    assert set(recap) == {"nodeA", "nodeB"}, "enroll must run on the ironclaw_nodes group only"
    for node, backend in (("nodeA", "tpm2"), ("nodeB", "software")):
        assert recap[node]["changed"] >= 2, recap  # node provisioned + record written
        record_path = enrolled.controller_dir / "store" / "nodes" / f"{node}.json"
        assert mode(record_path) == 0o600
        envelope = json.loads(record_path.read_text())
        # A4: a DSSE envelope signed by the trust root, over a format-3 record (with the attestation evidence).
        assert envelope["payloadType"] == "application/vnd.ironclaw.node.v1+json" and envelope["signatures"]
        record = json.loads(base64.b64decode(envelope["payload"]))
        assert record["format"] == "ironclaw-node-record/3"
        # DESIGN §8: the TPM node's record carries its proof (EK chained to the session CA); no TPM, no proof.
        if backend == "tpm2":
            assert record["attestation"]["trust"] == "ca" and record["attestation"]["srk_name"] == record["srk_name"]
        else:
            assert record["attestation"] is None
        assert record["node"] == node
        assert record["backend"] == backend
        assert record["srk_name"] and record["epoch_nv_name"] and record["srk_public"]
        # A6: the controller's trust root is pinned on the node at enrollment.
        pinned = sorted(p.name for p in (enrolled.nodes[node].state_dir / "trust").iterdir())
        assert pinned == sorted(p.name for p in (enrolled.controller_dir / "trust").iterdir())
    assert not (enrolled.controller_dir / "store" / "nodes" / "nodeX.json").exists()
    assert not enrolled.nodes["nodeX"].state_dir.exists()


def test_enroll_again_changes_nothing(enrolled: Lab, run_playbook):
    before = enrolled.snapshot()
    second = run_playbook("enroll")
    assert {host: counts["changed"] for host, counts in second.recap.items()} == {"nodeA": 0, "nodeB": 0}
    assert enrolled.snapshot() == before


# -- provision, verify, unseal ---------------------------------------------------


@pytest.mark.parametrize("node", NODES)
def test_provision_seals_three_secrets_and_verify_passes(provisioned: Lab, node: str):
    provision = provisioned.results["provision", node]
    assert provision.recap[node]["failed"] == 0
    # The VM's policy key created on the controller, secrets sealed, manifest version 1 published.
    expected = [SIGN_TASK, SEAL_TASK, *PUBLISH_TASKS]
    assert sorted(changed_tasks(provision.stdout)) == sorted(expected), provision.stdout
    assert provisioned.policy_key(node, VM_MAIN).is_file()
    vm_dir = provisioned.vm_dir(node, VM_MAIN)
    assert mode(vm_dir) == 0o700
    assert sorted(p.name for p in vm_dir.iterdir()) == sorted(
        ["keyslot.json", "approval.json", "manifest.json"] + [f"{name}.sealed" for name in SECRET_NAMES]
    )
    for name in SECRET_NAMES:
        blob = provisioned.blob(node, VM_MAIN, name)
        assert mode(blob) == 0o600
        header = blob_header(blob)
        assert header["format"] == BLOB_FORMAT
        assert (header["vmid"], header["vm_uuid"], header["name"]) == (VM_MAIN, vm_uuid_of(node, VM_MAIN), name)
        assert header["generation"] == 1
        assert header["length"] == len(provisioned.plaintexts[name])
        assert provisioned.plaintexts[name][:32] not in blob.read_bytes()
    keyslot = json.loads(provisioned.vm_dir(node, VM_MAIN).joinpath("keyslot.json").read_text())
    assert keyslot["backend"] == ("tpm2" if node == "nodeA" else "software")

    verify = provisioned.results["verify", node]
    assert (verify.recap[node]["failed"], verify.recap[node]["changed"]) == (0, 0)
    assert (
        f"VM {VM_MAIN} on {node}: manifest v1, 3 secret(s) verified (api-token, db-pass, master-key)" in verify.stdout
    )


@pytest.mark.parametrize("node", NODES)
def test_unseal_gives_back_the_exact_bytes(provisioned: Lab, node: str, tmp_path: Path):
    dest = tmp_path / "out"
    result = provisioned.unseal(node, VM_MAIN, dest)
    assert result.recap[node]["changed"] == 1
    assert mode(dest) == 0o700
    assert sorted(os.listdir(dest)) == SECRET_NAMES
    for name, plaintext in provisioned.plaintexts.items():
        assert (dest / name).read_bytes() == plaintext, f"{name} differs after unsealing on {node}"
        assert mode(dest / name) == 0o600
    again = provisioned.unseal(node, VM_MAIN, dest)
    assert again.recap[node]["changed"] == 0


@pytest.mark.parametrize("node", NODES)
def test_second_provision_changes_nothing(provisioned: Lab, node: str):
    before = provisioned.snapshot()
    second = provisioned.provision(node, VM_MAIN)
    assert second.recap[node]["changed"] == 0, changed_tasks(second.stdout)
    assert second.recap[node]["failed"] == 0
    assert provisioned.snapshot() == before


@pytest.mark.parametrize("node", NODES)
def test_changed_secret_reseals_only_that_blob(enrolled: Lab, node: str):
    lab = enrolled
    text_path = lab.root / f"db-pass-{node}.txt"
    text_path.write_bytes(b"first value\n")
    secrets_file = lab.write_secrets(
        f"changing-{node}.json",
        [
            {"name": "master-key", "src": str(lab.big_path)},
            {"name": "db-pass", "src": str(text_path)},
            {"name": "api-token", "content": lab.inline},
        ],
    )
    lab.provision(node, VM_CHANGED, secrets_file)
    vm_dir = lab.vm_dir(node, VM_CHANGED)
    before = {path.name: path.read_bytes() for path in vm_dir.iterdir()}

    text_path.write_bytes(b"second value, rotated\n")
    rerun = lab.provision(node, VM_CHANGED, secrets_file)
    assert changed_tasks(rerun.stdout) == [SEAL_TASK, *PUBLISH_TASKS], rerun.stdout

    after = {path.name: path.read_bytes() for path in vm_dir.iterdir()}
    assert sorted(after) == sorted(before)
    # The blob, and the node's cached manifest (now version 2).
    assert [name for name in sorted(after) if after[name] != before[name]] == ["db-pass.sealed", "manifest.json"]
    assert blob_header(vm_dir / "db-pass.sealed")["generation"] == 2
    assert blob_header(vm_dir / "master-key.sealed")["generation"] == 1

    dest = lab.root / f"rotated-{node}"
    lab.unseal(node, VM_CHANGED, dest)
    assert (dest / "db-pass").read_bytes() == b"second value, rotated\n"


def test_provision_runs_in_at_most_eight_tasks_and_a_re_run_changes_nothing(enrolled: Lab):
    first = enrolled.provision("nodeB", VM_CEILING)
    assert task_count(first.stdout) <= PROVISION_MAX_TASKS, first.stdout
    before = enrolled.snapshot()
    again = enrolled.provision("nodeB", VM_CEILING)
    assert task_count(again.stdout) <= PROVISION_MAX_TASKS, again.stdout
    assert again.recap["nodeB"]["changed"] == 0, changed_tasks(again.stdout)
    assert enrolled.snapshot() == before
    probe = enrolled.provision("nodeB", VM_CEILING, check=True)
    assert task_count(probe.stdout) <= PROVISION_MAX_TASKS, probe.stdout
    assert probe.recap["nodeB"]["changed"] == 0, changed_tasks(probe.stdout)


@pytest.mark.parametrize("point", sorted(VM_FAULTS))
def test_killed_provision_converges_when_re_run(enrolled: Lab, point: str):
    node, vmid = "nodeA", VM_FAULTS[point]
    args = enrolled.vm_args(node, vmid, secrets_file=enrolled.secrets_file)
    killed = enrolled.start("provision", *args, env_extra={"IRONCLAW_FAULT_AT": point})
    killed.communicate(timeout=180)
    assert killed.returncode == -signal.SIGKILL, f"the run was not killed at {point}"
    # Killed right after the step's effect: sealed on the node, recorded (or not yet) in the store.
    assert sorted(p.name for p in enrolled.vm_dir(node, vmid).glob("*.sealed")) == [
        f"{name}.sealed" for name in SECRET_NAMES
    ]
    recorded = [p.name for p in enrolled.store_chain(node, vmid)]
    assert recorded == (["manifest-00000001.json"] if point == "provision.recorded" else [])
    assert not (enrolled.vm_dir(node, vmid) / "manifest.json").exists(), "killed before the node cached it"

    rerun = enrolled.provision(node, vmid)
    assert SEAL_TASK not in changed_tasks(rerun.stdout), "the secrets sealed before the kill stay as they are"
    assert [p.name for p in enrolled.store_chain(node, vmid)] == ["manifest-00000001.json"]
    verify = enrolled.verify(node, vmid)
    assert f"VM {vmid} on {node}: manifest v1, 3 secret(s) verified" in verify.stdout
    before = enrolled.snapshot()
    assert enrolled.provision(node, vmid).recap[node]["changed"] == 0
    assert enrolled.snapshot() == before


def test_seal_role_seals_and_a_re_run_changes_nothing(enrolled: Lab):
    """The seal role stays the public contract: the provision steps under it, then manifest_store's publish."""
    playbook = str(Path(__file__).parent / "playbooks" / "seal_role.yml")
    args = enrolled.vm_args("nodeB", VM_ROLE, secrets_file=enrolled.secrets_file)
    first = enrolled.run(playbook, *args)
    assert SEAL_TASK in changed_tasks(first.stdout), first.stdout
    assert f"seal role identity {vm_uuid_of('nodeB', VM_ROLE)} from variables" in first.stdout
    verify = enrolled.verify("nodeB", VM_ROLE)
    assert f"VM {VM_ROLE} on nodeB: manifest v1, 3 secret(s) verified" in verify.stdout
    before = enrolled.snapshot()
    again = enrolled.run(playbook, *args)
    assert again.recap["nodeB"]["changed"] == 0, changed_tasks(again.stdout)
    assert enrolled.snapshot() == before


# -- check mode ------------------------------------------------------------------


@pytest.mark.parametrize("node", NODES)
def test_check_mode_on_a_fresh_vm_creates_nothing(enrolled: Lab, node: str):
    before = enrolled.snapshot()
    result = enrolled.provision(node, VM_CHECK, check=True)
    assert result.recap[node]["failed"] == 0
    assert result.recap[node]["changed"] >= 1, "check mode must report that the VM would be sealed"
    assert not enrolled.vm_dir(node, VM_CHECK).exists()
    assert not enrolled.policy_key(node, VM_CHECK).exists()
    assert enrolled.snapshot() == before


# -- tampering -------------------------------------------------------------------


@pytest.mark.parametrize("node", NODES)
def test_verify_fails_on_a_tampered_byte_and_names_the_blob(enrolled: Lab, node: str):
    enrolled.provision(node, VM_TAMPERED)
    blob = enrolled.blob(node, VM_TAMPERED, "db-pass")
    data = bytearray(blob.read_bytes())
    header_len = int.from_bytes(data[:4], "big")
    ciphertext_at = 4 + header_len + NONCE_LEN
    assert len(data) > ciphertext_at + 16 + 1, "the blob has no ciphertext to tamper with"
    data[ciphertext_at + 1] ^= 0x01
    blob.write_bytes(bytes(data))

    result = enrolled.verify(node, VM_TAMPERED, expect_fail=True)
    assert result.recap[node]["failed"] == 1
    # The manifest rule (exact SHA-256 of every file) refuses it before anything is unsealed.
    verified = task_result(result.stdout, "Verify the sealed state against the signed manifest, then test-unseal", node)
    assert f"does not match manifest version 1 of VM {VM_TAMPERED}" in verified["msg"]
    assert "blob 'db-pass' was swapped or altered" in verified["msg"]
    assert "api-token" not in verified["msg"] and "master-key" not in verified["msg"]


# -- no plaintext in output, even at -vvvv ----------------------------------------


@pytest.mark.parametrize("node", NODES)
def test_verbose_runs_never_show_plaintext(enrolled: Lab, node: str, tmp_path: Path):
    runs = {
        "provision": enrolled.provision(node, VM_VERBOSE, verbosity=4),
        "verify": enrolled.verify(node, VM_VERBOSE, verbosity=4),
        "unseal": enrolled.unseal(node, VM_VERBOSE, tmp_path / "out", verbosity=4),
    }
    # The runs did their work: the output below is from real sealing and unsealing.
    assert (tmp_path / "out" / "api-token").read_bytes() == enrolled.inline.encode()
    assert "3 secret(s) verified" in runs["verify"].stdout
    assert '"files": [' in runs["unseal"].stdout, "the unseal playbook must show the module's whole result"
    markers = {name: leak_markers(plaintext) for name, plaintext in enrolled.plaintexts.items()}
    markers["api-token"].append(enrolled.inline.encode())
    markers["db-pass"].append(enrolled.text.strip())
    for playbook, result in runs.items():
        # -vvvv shows each module's command line: the node's own interpreter ran it.
        assert f"<{node}> EXEC /bin/sh -c '{enrolled.nodes[node].python} " in result.stdout
        output = (result.stdout + result.stderr).encode("utf-8", "surrogateescape")
        for name, forms in markers.items():
            for form in forms:
                assert form not in output, f"{playbook} -vvvv on {node} shows secret {name!r} ({form[:12]!r}...)"


# -- bad input: a clear message and nothing changed ---------------------------------


def _fails_cleanly(lab: Lab, args: list[str], message: str, node: str = "nodeA"):
    before = lab.snapshot()
    result = lab.run("provision", *args, expect_fail=True)
    assert result.recap[node]["failed"] == 1, result.stdout
    assert message in result.stdout, f"expected {message!r} in:\n{result.stdout[-4000:]}"
    assert lab.snapshot() == before, "a failed run changed files on the node or controller"
    return result


def test_unreachable_tpm_names_the_tcti(enrolled: Lab):
    port = free_port_pair()  # nothing listens there
    tcti = f"swtpm:host=127.0.0.1,port={port}"
    args = [*enrolled.vm_args("nodeA", VM_BAD_TCTI, secrets_file=enrolled.secrets_file), "-e", f"ironclaw_tcti={tcti}"]
    _fails_cleanly(enrolled, args, f"cannot reach the TPM at tcti '{tcti}'")


@pytest.mark.parametrize("vmid", [99, 1000000000])
def test_vmid_out_of_range(enrolled: Lab, vmid: int):
    args = enrolled.vm_args("nodeA", vmid, secrets_file=enrolled.secrets_file)
    # Refused on the controller by the request check, before the run's locks are named or taken.
    _fails_cleanly(enrolled, args, f"VMID must be from 100 to 999999999, found {vmid}", node="localhost")


def test_malformed_vm_uuid(enrolled: Lab):
    args = enrolled.vm_args("nodeA", VM_BAD_UUID, vm_uuid="not-a-uuid", secrets_file=enrolled.secrets_file)
    _fails_cleanly(enrolled, args, "VM uuid must be in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", node="localhost")


@pytest.mark.parametrize("policy", [{"migratable": True, "foo": 1}, "migratable=true;foo=1"], ids=["dict", "string"])
def test_unknown_policy_key(enrolled: Lab, policy):
    policy_file = enrolled.root / "policy-unknown.json"
    policy_file.write_text(json.dumps({"ironclaw_policy": policy}))
    args = [*enrolled.vm_args("nodeA", VM_BAD_POLICY, secrets_file=enrolled.secrets_file), "-e", f"@{policy_file}"]
    _fails_cleanly(enrolled, args, "unknown key(s) foo; known keys: migratable, pcrs")


def test_missing_secret_file_on_the_controller(enrolled: Lab):
    missing = enrolled.root / "no-such-secret"
    secrets_file = enrolled.write_secrets("missing-src.json", [{"name": "gone", "src": str(missing)}])
    args = enrolled.vm_args("nodeA", VM_BAD_SRC, secrets_file=secrets_file)
    _fails_cleanly(enrolled, args, str(missing))


def test_provision_on_a_node_that_is_not_enrolled(enrolled: Lab):
    args = enrolled.vm_args("nodeX", VM_NOT_ENROLLED, secrets_file=enrolled.secrets_file)
    _fails_cleanly(enrolled, args, "nodeX is not enrolled", node="nodeX")
    assert not enrolled.nodes["nodeX"].state_dir.exists()


# -- TPM cost is per VM ------------------------------------------------------------


def test_tpm_commands_per_vm_not_per_secret(playbook_tools, counted_swtpm, tmp_path: Path):
    # A node of its own behind the counting proxy; the tpm2 backend on the test
    # interpreter here (tpm2-pytss from PyPI), where nodeA covers Debian's.
    # Its swtpm has no EK certificate: attestation is not what this counts, so the node enrolls as tofu.
    lab = Lab(
        tmp_path,
        [Node("nodeC", "tpm2", tmp_path / "nodeC", sys.executable, tcti=counted_swtpm.tcti, ek_trust="tofu")],
    )
    lab.run("init", "-e", f"ironclaw_controller_dir={lab.controller_dir}")
    lab.run("enroll")
    many = lab.write_secrets(
        "sixty.json", [{"name": f"secret-{i:02d}", "content": f"value {i} {os.urandom(8).hex()}"} for i in range(60)]
    )
    counts = {}
    for vmid, secrets_file in ((300, many), (301, lab.secrets_file)):
        counted_swtpm.counter.reset()
        lab.provision("nodeC", vmid, secrets_file)
        counts[vmid] = counted_swtpm.counter.by_name()
    assert len(list(lab.vm_dir("nodeC", 300).glob("*.sealed"))) == 60
    assert len(list(lab.vm_dir("nodeC", 301).glob("*.sealed"))) == 3
    assert sum(counts[300].values()) > 0
    assert counts[300] == counts[301], "TPM work must not grow with the number of secrets"
    # One keyslot created and one test-unseal per run.
    assert counts[300].get("Create") == 1
    assert counts[300].get("Unseal") == 1


# -- a fleet in one run ------------------------------------------------------------


def test_fleet_provision_runs_the_tasks_of_one_vm_and_few_tpm_commands_per_extra_vm(playbook_tools, tmp_path):
    """One VM, then ten in one run (ironclaw_vms), counted on the node's swtpm: the same tasks for both (one per
    step, never one per VM), and an extra VM costs only its own TPM work: the node's facts are read once per run and
    every VM is sealed under one backend context. Every VM of the fleet is sealed, recorded and verifies."""
    with enrolled_lab(tmp_path, [("nodeA", "tpm2", DEBIAN_PYTHON)], counted=True) as lab:
        counter = lab.counters["nodeA"]

        def counted(run):
            before = counter.snapshot()
            done = run()
            return sum((counter.snapshot() - before).values()), done

        one, single = counted(lambda: lab.provision("nodeA", VM_FLEET_ONE))
        ten, many = counted(lambda: lab.provision_fleet("nodeA", FLEET))
        per_extra = (ten - one) / (len(FLEET) - 1)
        print(f"TPM commands: 1 VM {one}, {len(FLEET)} VMs {ten}, per extra VM {per_extra}")
        assert per_extra <= PROVISION_TPM_COMMANDS_PER_EXTRA_VM, (one, ten)
        assert task_count(single.stdout) == task_count(many.stdout) <= PROVISION_MAX_TASKS, many.stdout
        for vmid in FLEET:
            assert sorted(p.name for p in lab.vm_dir("nodeA", vmid).glob("*.sealed")) == [
                f"{name}.sealed" for name in SECRET_NAMES
            ]
            assert [p.name for p in lab.store_chain("nodeA", vmid)] == ["manifest-00000001.json"]
        lab.verify("nodeA", FLEET[-1])
        again = lab.provision_fleet("nodeA", FLEET)
        assert again.recap["nodeA"]["changed"] == 0, changed_tasks(again.stdout)


def test_fleet_with_a_vm_placed_on_another_node_is_refused_whole_and_nothing_changes(enrolled: Lab):
    """A fleet provision on nodeA that lists a VM the store places on nodeB: refused, naming it, before a policy key
    is created, an approval signed or a blob sealed for the VM listed with it."""
    enrolled.provision("nodeB", VM_PLACED_ELSEWHERE)
    before = enrolled.snapshot()
    vms = [
        {"vmid": VM_LISTED_WITH_IT, "vm_uuid": vm_uuid_of("nodeA", VM_LISTED_WITH_IT)},
        {"vmid": VM_PLACED_ELSEWHERE, "vm_uuid": vm_uuid_of("nodeB", VM_PLACED_ELSEWHERE)},
    ]
    refused = enrolled.run(
        "provision",
        *("-e", "ironclaw_node=nodeA", "-e", json.dumps({"ironclaw_vms": vms}), "-e", f"@{enrolled.secrets_file}"),
        expect_fail=True,
    )
    assert f"VM {VM_PLACED_ELSEWHERE}" in refused.stdout and "places it on nodeB" in refused.stdout, refused.stdout
    assert "PlacementError" in refused.stdout, refused.stdout
    assert enrolled.snapshot() == before
    assert not enrolled.policy_key("nodeA", VM_LISTED_WITH_IT).exists()


# -- concurrency -----------------------------------------------------------------


def test_two_provision_runs_at_once_are_serialized(enrolled: Lab):
    argv_args = enrolled.vm_args("nodeA", VM_CONCURRENT, secrets_file=enrolled.secrets_file)
    procs = [enrolled.start("provision", *argv_args) for _attempt in range(2)]
    results = [enrolled.wait(proc) for proc in procs]
    for result in results:
        assert result.recap["nodeA"]["failed"] == 0
    enrolled.verify("nodeA", VM_CONCURRENT)
    for name in SECRET_NAMES:
        assert blob_header(enrolled.blob("nodeA", VM_CONCURRENT, name))["generation"] == 1
    # One policy key, one sealing and one stored manifest between them, whichever run got there first.
    changed = [task for result in results for task in changed_tasks(result.stdout)]
    shown = "\n=====\n".join(r.stdout for r in results)
    assert changed.count(SEAL_TASK) == 1 and changed.count(SIGN_TASK) == 1 and changed.count(STORE_TASK) == 1, shown
    assert [p.name for p in enrolled.store_chain("nodeA", VM_CONCURRENT)] == ["manifest-00000001.json"]


def test_parse_recap_reads_every_host():
    text = (
        "PLAY RECAP ****\n"
        "nodeA   : ok=7    changed=2    unreachable=0    failed=0    skipped=1    rescued=0    ignored=0\n"
        "nodeB   : ok=3    changed=0    unreachable=0    failed=1    skipped=0    rescued=0    ignored=0\n"
    )
    recap = parse_recap(text)
    assert recap["nodeA"]["changed"] == 2 and recap["nodeA"]["skipped"] == 1
    assert recap["nodeB"]["failed"] == 1


def test_task_result_reads_the_printed_json():
    text = (
        "TASK [ironclaw.sealed.seal : Seal the secrets] ****\n"
        "ok: [nodeB]\n"
        'fatal: [nodeA]: FAILED! => {"changed": false, "msg": "nope ] =>"}\n'
        "TASK [Report] ****\n"
        'ok: [nodeA -> localhost] => {\n    "msg": "done"\n}\n'
    )
    assert task_result(text, "Seal the secrets", "nodeA") == {"changed": False, "msg": "nope ] =>"}
    assert task_result(text, "Report", "nodeA") == {"msg": "done"}
    with pytest.raises(AssertionError):
        task_result(text, "Seal the secrets", "nodeC")


def test_changed_tasks_drops_the_role_prefix():
    text = (
        "TASK [ironclaw.sealed.seal : Read the node's TPM facts] ****\n"
        "ok: [nodeA]\n"
        "TASK [ironclaw.sealed.seal : Seal the secrets] ****\n"
        "changed: [nodeA]\n"
        "TASK [Report] ****\n"
        "changed: [nodeB] => {}\n"
    )
    assert changed_tasks(text) == ["Seal the secrets", "Report"]
