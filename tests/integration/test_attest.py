# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attest playbook (DESIGN §8, issue #14): every link printed as passed or failed, the first broken one named,
on a node whose swtpm was manufactured with EK certificates by a test CA."""

# ruff: noqa: F811 - the rig's fixtures are imported by name, then requested by the tests

from __future__ import annotations

import base64
import json
import re
import sys

import pytest
from playbook_rig import DEBIAN_PYTHON, Lab, Node, enrolled_lab

from rig.attest import PROOF_LINKS_CA, ek_ca, other_ek_ca, provisioned  # noqa: F401 pylint: disable=unused-import
from rig.swtpm import Swtpm

pytestmark = pytest.mark.swtpm

NODE = "pve1"
LINKS = (*PROOF_LINKS_CA, "record unchanged since enrollment")
# A standalone base64 value of 32 bytes (what a credential secret or a nonce looks like on the wire).
# Measured: 57 for init + enroll of one node (provisioning, the AK's creation and activation, the proof's two
# activations and one quote); the ceiling leaves a little room, not a second proof.
ENROLL_TPM_CEILING = 60
B64_32 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=(?![A-Za-z0-9+/=])")


@pytest.fixture
def lab(tmp_path, playbook_tools, ek_ca):
    # pylint: disable-next=contextmanager-generator-missing-cleanup
    with enrolled_lab(tmp_path, [(NODE, "tpm2", DEBIAN_PYTHON)], ek_ca=ek_ca) as made:
        yield made


def attest(lab, ca_dir=None, *extra, **options):
    args = ["-l", NODE, *extra]
    if ca_dir is not None:
        args += ["-e", f"ironclaw_ek_ca_dir={ca_dir}"]
    return lab.run("attest", *args, **options)


def printed(stdout: str) -> list[tuple[str, str]]:
    return re.findall(r'"msg": "(PASSED|FAILED): ([^:"]+):', stdout)


def test_attest_passes_every_link_on_a_genuine_tpm_and_prints_them(lab, ek_ca):
    done = attest(lab, ek_ca.trust_dir)
    assert printed(done.stdout) == [("PASSED", link) for link in LINKS]
    assert done.recap[NODE]["failed"] == 0


def test_tpm_from_another_ca_fails_at_the_chain_with_nothing_changed(lab, ek_ca, other_ek_ca):
    attest(lab, ek_ca.trust_dir)  # the AK exists from here on: a later run changes nothing on a good node either
    before = lab.snapshot()
    done = attest(lab, other_ek_ca.trust_dir, expect_fail=True)
    assert printed(done.stdout) == [("FAILED", "EK certificate chain")]
    assert "EK certificate chain: FAILED" in done.stdout and "EkChainError" in done.stdout
    assert lab.snapshot() == before


def test_pin_mode_prints_the_value_to_pin_then_passes_with_it(lab):
    refused = attest(lab, None, "-e", "ironclaw_ek_trust=pin", expect_fail=True)
    assert printed(refused.stdout) == [("FAILED", "EK pin")]
    pins = set(re.findall(r"ironclaw_ek_pin: '(sha256:[0-9a-f]{64})'", refused.stdout))
    assert len(pins) == 1
    done = attest(lab, None, "-e", "ironclaw_ek_trust=pin", "-e", f"ironclaw_ek_pin={pins.pop()}")
    assert printed(done.stdout) == [("PASSED", "EK pin"), *(("PASSED", link) for link in LINKS[2:])]


def test_replaced_tpm_fails_at_record_unchanged_naming_both_srk_names(lab, ek_ca):
    """The node keeps its state directory; its TPM is swapped for another genuine one from the same vendor."""
    enrolled = re.findall(r"SRK named ([0-9a-f]{20})", attest(lab, ek_ca.trust_dir).stdout)[0]
    with Swtpm(manufacture=ek_ca.manufacture) as other:
        provisioned(other)
        lab.nodes[NODE].tcti = other.tcti
        lab.write_inventory()
        done = attest(lab, ek_ca.trust_dir, expect_fail=True)
    # Its EK is not the recorded one: no credential is made for it, the record link fails after the evidence links.
    assert printed(done.stdout) == [("PASSED", link) for link in LINKS[:4]] + [("FAILED", LINKS[-1])]
    message = done.stdout[done.stdout.index("record unchanged since enrollment: FAILED") :]
    assert enrolled in message, "the enrolled SRK is named"
    assert re.search(r"now holds the SRK named [0-9a-f]{64}", message), "and the TPM's SRK"


def test_secrets_never_appear_in_verbose_output(lab, ek_ca):
    """At -vvvv: no credential, activation answer or nonce field in any result, and no 32-byte base64 value."""
    done = attest(lab, ek_ca.trust_dir, verbosity=4)
    output = done.stdout + done.stderr
    assert len(printed(done.stdout)) == len(LINKS)
    for field in ("activation", "secret", "credentials", "id_object", "encrypted_secret", "nonce"):
        assert f'"{field}"' not in output, f"{field} in the output"
    assert B64_32.findall(output) == []


def test_software_node_is_refused_with_nothing_changed(tmp_path, playbook_tools):
    """A software-backend node has no TPM: attest refuses it in plain words instead of proving something else."""
    # pylint: disable-next=contextmanager-generator-missing-cleanup
    with enrolled_lab(tmp_path, [("soft1", "software", sys.executable)]) as lab:
        before = lab.snapshot()
        done = lab.run("attest", "-l", "soft1", "-e", "ironclaw_ek_trust=tofu", expect_fail=True)
        assert "software-backend node: it has no TPM, so there is nothing to attest" in done.stdout
        assert printed(done.stdout) == []
        assert lab.snapshot() == before


# -- enrollment runs the proof and signs its evidence into the node record (DESIGN §8) ---------------------------
def record_payload(lab, node: str = NODE) -> dict:
    envelope = json.loads((lab.controller_dir / "store" / "nodes" / f"{node}.json").read_text())
    return json.loads(base64.b64decode(envelope["payload"]))


def test_enroll_signs_the_attestation_evidence_into_the_node_record(lab, ek_ca):
    record = record_payload(lab)
    attestation = record["attestation"]
    assert record["format"] == "ironclaw-node-record/3"
    assert attestation["trust"] == "ca" and len(attestation["ek_chain"]) == 3
    assert attestation["srk_name"] == record["srk_name"]
    assert attestation["ek_public_sha256"].startswith("sha256:")


def test_enroll_from_another_ca_is_refused_with_the_pin_printed_then_enrolls_by_pin(
    tmp_path, playbook_tools, other_ek_ca
):
    """A TPM whose EK certificate does not chain to ironclaw_ek_ca_dir: no record is signed; the refusal prints the
    pin and the variables to set; with them the node enrolls, and its record says pin."""
    with Swtpm(manufacture=other_ek_ca.manufacture) as tpm:
        lab = Lab(tmp_path, [Node(NODE, "tpm2", tmp_path / NODE, DEBIAN_PYTHON, tcti=tpm.tcti)])
        lab.run("init", "-e", f"ironclaw_controller_dir={lab.controller_dir}")
        refused = lab.run("enroll", expect_fail=True)
        assert "EK certificate chain: FAILED" in refused.stdout
        assert not (lab.controller_dir / "store" / "nodes" / f"{NODE}.json").exists()
        pins = set(re.findall(r"ironclaw_ek_pin: '(sha256:[0-9a-f]{64})'", refused.stdout))
        assert len(pins) == 1 and "ironclaw_ek_trust: pin" in refused.stdout
        lab.run("enroll", "-e", "ironclaw_ek_trust=pin", "-e", f"ironclaw_ek_pin={pins.pop()}")
        assert record_payload(lab)["attestation"]["trust"] == "pin"


def test_enroll_tpm_command_ceiling(tmp_path, playbook_tools, ek_ca):
    """init + enroll of one tpm2 node, counted at the swtpm: provisioning, the AK, both activations and a quote."""
    # pylint: disable-next=contextmanager-generator-missing-cleanup
    with enrolled_lab(tmp_path, [(NODE, "tpm2", DEBIAN_PYTHON)], counted=True, ek_ca=ek_ca) as made:
        counts = made.counters[NODE].by_name()
    total = sum(counts.values())
    assert counts.get("Quote") == 1, counts
    assert total <= ENROLL_TPM_CEILING, counts
