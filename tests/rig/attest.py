"""Fixtures and helpers for attestation tests: EK CAs, TPMs they manufactured, one proof run.

Import the fixtures into a test module (``from rig.attest import ek_ca, ...``);
pytest registers fixtures found in a module's namespace.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._attest.proof import (
    Proof,
    Trust,
    parse_evidence,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.attest import Attestor, answer_challenge
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode

from .counter import TpmCommandCounter
from .ekca import EkCa
from .swtpm import Swtpm

PCRS = PcrSelection.parse("sha256:0,7")


def _require_tools() -> None:
    for tool in ("swtpm", "swtpm_setup", "swtpm_localca"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not found: install the Debian packages swtpm and swtpm-tools (make bootstrap)")


@pytest.fixture(scope="module")
def ek_ca():
    _require_tools()
    with EkCa("ironclaw-test-vendor") as ca:
        yield ca


@pytest.fixture(scope="module")
def other_ek_ca():
    """An unrelated CA: its certificates must not chain to ek_ca's roots."""
    _require_tools()
    with EkCa("other-vendor") as ca:
        yield ca


def provisioned(tpm: Swtpm) -> Swtpm:
    with TpmNode(tpm.tcti) as node:
        node.provision()
    return tpm


@pytest.fixture
def ek_tpm(ek_ca):
    """A provisioned TPM (SRK, epoch counter) whose EK certificates ek_ca signed."""
    with Swtpm(manufacture=ek_ca.manufacture) as tpm:
        yield provisioned(tpm)


@pytest.fixture
def ek_tpm_pair(ek_ca):
    with Swtpm(manufacture=ek_ca.manufacture) as first, Swtpm(manufacture=ek_ca.manufacture) as second:
        yield provisioned(first), provisioned(second)


@pytest.fixture
def counted_ek_tpm(ek_tpm):
    with TpmCommandCounter(ek_tpm) as counter:
        yield counter


def evidence(tcti: str, ek_type: str | None = None) -> dict:
    """What ``ironclaw_node state=attested`` returns: one TPM context, as one module run."""
    with TpmNode(tcti) as node, Attestor(node, ek_type) as attestor:
        return attestor.evidence()


def answer(tcti: str, request: dict, ek_type: str | None = None) -> dict:
    """The node's answers to a challenge: one TPM context, as one module run."""
    with TpmNode(tcti) as node, Attestor(node, ek_type, with_certificate=False) as attestor:
        return answer_challenge(attestor, request)


def now() -> datetime:
    return datetime.now(UTC)


def prove(tcti: str, trust: Trust, node: str = "pve1", evidence_doc: dict | None = None, answer_tcti: str = ""):
    """Run the whole proof against the TPM at tcti; returns the Proof (its links) or raises at the broken link.

    ``evidence_doc`` replaces what the node would report (an attacker's evidence); ``answer_tcti``
    lets another TPM answer the challenge.
    """
    doc = evidence_doc if evidence_doc is not None else evidence(tcti)
    proof = Proof(parse_evidence(doc, node), trust, now())
    proof.check_identity()
    challenge = proof.challenge(PCRS)
    proof.check_answers(challenge, answer(answer_tcti or tcti, challenge.request()))
    return proof


def tpm_handles(tcti: str) -> tuple[list[int], list[int]]:
    """Persistent objects and NV indices: what a refused proof must leave as it found them."""
    with TpmNode(tcti) as node:
        t = node.t
        _more, persistent = node.ctx.get_capability(capability=t.TPM2_CAP.HANDLES, prop=0x81000000, property_count=64)
        _more, nv = node.ctx.get_capability(capability=t.TPM2_CAP.HANDLES, prop=0x01000000, property_count=64)
        return [int(h) for h in persistent.data.handles], [int(h) for h in nv.data.handles]


# The proof's links in order, with the CA trust mode, up to the quote (what Proof.links names).
PROOF_LINKS_CA = (
    "EK certificate chain",
    "EK public matches its certificate",
    "SRK attributes",
    "AK attributes",
    "SRK activation",
    "AK activation",
    "quote",
)
