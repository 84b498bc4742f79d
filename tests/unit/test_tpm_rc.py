# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""TPM response codes in our errors: named (TPM_RC_..., TSS2_..._RC_...), placed, explained, with the fix."""

from __future__ import annotations

import pytest

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import TpmError
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm import rc
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.context import tpm_errors
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode


@pytest.mark.parametrize(
    ("code", "name", "layer", "where"),
    [
        (0x921, "TPM_RC_LOCKOUT", "TPM", ""),
        (0x98E, "TPM_RC_AUTH_FAIL", "TPM", "session 1"),
        (0x18B, "TPM_RC_HANDLE", "TPM", "handle 1"),
        (0x2C4, "TPM_RC_VALUE", "TPM", "parameter 2"),
        (0x09D, "TPM_RC_POLICY_FAIL", "TPM", ""),
        (0x101, "TPM_RC_FAILURE", "TPM", ""),
        (0x100, "TPM_RC_INITIALIZE", "TPM", ""),
        (0x14B, "TPM_RC_NV_SPACE", "TPM", ""),
        (0x902, "TPM_RC_OBJECT_MEMORY", "TPM", ""),
        (0x903, "TPM_RC_SESSION_MEMORY", "TPM", ""),
        (0x920, "TPM_RC_NV_RATE", "TPM", ""),
        (0xA000A, "TSS2_TCTI_RC_IO_ERROR", "TCTI", ""),
        (0xA0008, "TSS2_TCTI_RC_NO_CONNECTION", "TCTI", ""),
        (0x7000B, "TSS2_ESYS_RC_BAD_VALUE", "ESAPI", ""),
        (0xC0921, "TPM_RC_LOCKOUT", "RESMGR_TPM", ""),
        (0x17F, "TPM_RC_0x17f", "TPM", ""),
        (0x123456, "TSS2_RC_0x00123456", "layer 18", ""),
    ],
)
def test_response_code_is_named_and_placed(code, name, layer, where):
    decoded = rc.decode(code)
    assert (decoded.name, decoded.layer, decoded.where) == (name, layer, where)


class _Exc(Exception):
    """What tpm2-pytss raises: an integer ``rc`` and Tss2_RC_Decode's text."""

    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.rc = code


def test_lockout_says_the_keyslots_are_noda_and_how_to_clear_it():
    text = rc.describe(_Exc(0x921, "tpm:warn(2.0): the TPM is in DA lockout mode"))
    assert text.startswith("TPM_RC_LOCKOUT (0x00000921): the TPM is in DA lockout mode; ")
    assert "noDA" in text and "keep working" in text and "tpm2_dictionarylockout --clear-lockout" in text


def test_lost_connection_names_the_tcti():
    text = rc.describe(_Exc(0xA000A, "tcti:IO failure"), "swtpm:host=127.0.0.1,port=2321")
    assert text.startswith("TSS2_TCTI_RC_IO_ERROR (0x000a000a): IO failure; ")
    assert "tcti 'swtpm:host=127.0.0.1,port=2321'" in text and "nothing is half-written" in text


def test_an_error_without_a_response_code_is_shown_as_is():
    assert rc.describe(OSError("no such file")) == "no such file"


@pytest.mark.swtpm
def test_tpm_refusal_in_an_error_names_the_response_code(swtpm):
    with TpmNode(swtpm.tcti) as node:
        with pytest.raises(TpmError) as err, tpm_errors("reading the public area", "provision the node"):
            node.ctx.read_public(node.ctx.tr_from_tpmpublic(0x81000077))
    message = str(err.value)
    assert message.startswith("reading the public area: the TPM refused (TPM_RC_HANDLE (0x0000018b, handle 1): ")
    assert message.endswith(". provision the node")


@pytest.mark.swtpm
def test_tpm_dying_mid_command_names_the_tcti_and_io_error(counted_swtpm):
    with TpmNode(counted_swtpm.tcti) as node:
        counted_swtpm.counter.die_at(1, then=counted_swtpm.swtpm.stop)
        with pytest.raises(TpmError) as err, tpm_errors("reading the clock"):
            node.ctx.read_clock()
    message = str(err.value)
    assert message.startswith("reading the clock: the TPM could not be reached (TSS2_TCTI_RC_")
    assert f"tcti '{counted_swtpm.tcti}'" in message
