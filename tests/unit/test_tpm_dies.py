# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A TPM that dies in the middle of an operation (the counter proxy drops the connection at its N-th command, then
swtpm is stopped): the error says the TPM could not be reached and names the TCTI, and once swtpm comes back from
its state (as after a reboot) nothing is lost: the keyslot unseals, the epoch moved by at most the one bump."""

from __future__ import annotations

import functools

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from test_tpm_backend import VM, Slot, provisioned
from test_tpm_backend import keys as keys  # noqa: F401 pylint: disable=useless-import-alias,unused-import
from test_tpm_migration import export, import_here, seal_on, unseal_on

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import TpmError
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.backends import open_backend
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.node import TpmNode

pytestmark = pytest.mark.swtpm


def _killed_at(counted, n: int, call) -> None:
    """``call()`` with the TPM dying at its n-th command: a TpmError naming the TCTI, or (only when the cut falls on
    the cleanup, flushing a session or a loaded object) no error since the work was done. The caller brings swtpm
    back once its backend is closed."""
    counted.counter.die_at(n, then=counted.swtpm.stop)
    try:
        call()
    except TpmError as err:
        message = str(err)
        assert "could not be reached" in message and f"tcti '{counted.tcti}'" in message, (n, message)
    else:
        assert counted.counter.commands()[-1] == "FlushContext", (n, counted.counter.commands())


def dies_at_each_command(counted, tmp_path, operation, keys):
    """Run ``operation(backend, slot)`` with the TPM dying at each of its commands in turn (on a backend opened
    afresh each time, as a module run does), check the error, bring swtpm back and check nothing was lost."""
    provisioned(counted, tmp_path).close()
    state_dir = str(tmp_path / "a")
    with open_backend("tpm2", tcti=counted.tcti, state_dir=state_dir) as backend:
        slot = Slot(backend, keys)
    with open_backend("tpm2", tcti=counted.tcti, state_dir=state_dir) as backend:
        slot.backend = backend
        backend.epoch()
        counted.counter.reset()
        operation(backend, slot)
        total = counted.counter.total
    assert total > 0
    for n in range(1, total + 1):
        with open_backend("tpm2", tcti=counted.tcti, state_dir=state_dir) as again:
            slot.backend = again
            epoch = again.epoch()
            _killed_at(counted, n, functools.partial(operation, again, slot))
        counted.counter.die_at(None)
        counted.swtpm.start()  # from its state, as after a reboot
        with open_backend("tpm2", tcti=counted.tcti, state_dir=state_dir) as back:
            slot.backend = back
            assert back.epoch() in (epoch, epoch + 1)
            assert slot.unseal(slot.approval()) == slot.vrk, f"the keyslot did not survive a death at command {n}"
    print(f"TPM killed at each of {total} commands: converged every time")
    return total


def test_tpm_killed_at_each_command_of_unseal_converges(counted_swtpm, tmp_path, keys):
    def unseal(backend, slot):
        slot.unseal(slot.approval())

    assert dies_at_each_command(counted_swtpm, tmp_path, unseal, keys) >= 5


def test_tpm_killed_at_each_command_of_seal_converges(counted_swtpm, tmp_path, keys):
    key_name = keys.public(*VM)[1]

    def seal(backend, slot):
        backend.seal(
            slot.vrk, keyslot_id="1" * 32, vmid=VM[0], vm_uuid=VM[1], policy_key_name=key_name, migratable=True
        )

    assert dies_at_each_command(counted_swtpm, tmp_path, seal, keys) >= 2


def test_tpm_killed_at_each_command_of_epoch_bump_moves_it_at_most_once(counted_swtpm, tmp_path, keys):
    def bump(backend, slot):
        backend.bump_epoch()

    # The survivor check signs a fresh approval at the epoch the TPM has: it unseals at old or new epoch alike.
    assert dies_at_each_command(counted_swtpm, tmp_path, bump, keys) >= 1


def _fresh(counted, run):
    """``run(node)`` on a TpmNode opened afresh; the TPM dies at each of its commands in turn (see above)."""
    with TpmNode(counted.tcti) as node:
        node.epoch()
        counted.counter.reset()
        run(node)
        total = counted.counter.total
    for n in range(1, total + 1):
        with TpmNode(counted.tcti) as node:
            node.epoch()
            _killed_at(counted, n, functools.partial(run, node))
        counted.counter.die_at(None)
        counted.swtpm.start()
        yield n
    print(f"TPM killed at each of {total} commands: converged every time")


def test_tpm_killed_at_each_command_of_export_and_import_converges(counted_swtpm_pair):
    source, target = counted_swtpm_pair
    for counted in (source, target):
        with TpmNode(counted.tcti) as node:
            node.provision()
    key = ec.generate_private_key(ec.SECP256R1())
    with TpmNode(source.tcti) as a:
        slot = seal_on(a, key)
    vrk, public, _private, key_public, key_name = slot

    def export_once(a):
        with TpmNode(target.tcti) as b:
            return export(a, key, slot, b)

    for _n in _fresh(source, export_once):
        with TpmNode(source.tcti) as a:  # the source keeps its keyslot, and can still export it
            assert unseal_on(a, key, *slot[1:]) == vrk
            duplicate, seed = export_once(a)
    for _n in _fresh(target, lambda b: import_here(b, public=public, duplicate=duplicate, seed=seed)):
        with TpmNode(target.tcti) as b:  # a re-run of the import converges
            new_private = import_here(b, public=public, duplicate=duplicate, seed=seed)
            assert unseal_on(b, key, public, new_private, key_public, key_name) == vrk
