# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attest playbook (DESIGN §8, issue #14): every link printed as passed or failed, the first broken one named,
on a node whose swtpm was manufactured with EK certificates by a test CA."""

# ruff: noqa: F811 - the rig's fixtures are imported by name, then requested by the tests

from __future__ import annotations

import re
import sys

import pytest
from playbook_rig import DEBIAN_PYTHON, enrolled_lab

from rig.attest import PROOF_LINKS_CA, ek_ca, other_ek_ca, provisioned  # noqa: F401 pylint: disable=unused-import
from rig.swtpm import Swtpm

pytestmark = pytest.mark.swtpm

NODE = "pve1"
LINKS = (*PROOF_LINKS_CA, "record unchanged since enrollment")
# A standalone base64 value of 32 bytes (what a credential secret or a nonce looks like on the wire).
B64_32 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=(?![A-Za-z0-9+/=])")


@pytest.fixture
def lab(tmp_path, playbook_tools, ek_ca):
    # pylint: disable-next=contextmanager-generator-missing-cleanup
    with enrolled_lab(tmp_path, [(NODE, "tpm2", DEBIAN_PYTHON)], manufacture=ek_ca.manufacture) as made:
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
    assert printed(done.stdout) == [("PASSED", link) for link in LINKS[:-1]] + [("FAILED", LINKS[-1])]
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
