# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A node's TPM: the persistent SRK, the epoch counter and PCR reads."""

from __future__ import annotations

from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import BackendError, TpmError
from ansible_collections.ironclaw.sealed.plugins.module_utils._node.facts import NodeFacts
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import BANKS, PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm import templates
from ansible_collections.ironclaw.sealed.plugins.module_utils._tpm.context import (
    closed,
    open_esapi,
    pytss,
    refusal,
    tpm_errors,
)

_PCR_READ_MAX = 8  # TPML_DIGEST holds at most 8 digests per PCR_Read


class TpmNode:
    backend = "tpm2"

    def __init__(self, tcti: str):
        self.tcti = tcti
        self.t = pytss()
        self.ctx = open_esapi(tcti)
        self._srk = None
        self._srk_public = None  # (TPM2B_PUBLIC, name) read once by _check_srk
        self._epoch_nv = None
        self._externals = {}  # marshaled TPM2B_PUBLIC -> handle, loaded once per context (a migration's target SRK)

    # -- lifecycle -------------------------------------------------------
    def close(self) -> None:
        for handle in self._externals.values():
            try:
                self.ctx.flush_context(handle)
            except self.t.TSS2_Exception:
                pass
        self._externals = {}
        for handle in (self._srk, self._epoch_nv):
            if handle is not None:
                try:
                    self.ctx.tr_close(handle)
                except self.t.TSS2_Exception:
                    pass
        self._srk = self._srk_public = self._epoch_nv = None
        self.ctx.close()
        closed(self.tcti)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- handles ---------------------------------------------------------
    def external(self, public) -> object:
        """A public key loaded in the owner hierarchy once for this context (every VM of a fleet duplicates to the
        same target SRK: one TPM2_LoadExternal, flushed at close)."""
        key = bytes(public.marshal())
        if key not in self._externals:
            self._externals[key] = self.ctx.load_external(public, hierarchy=self.t.ESYS_TR.OWNER)
        return self._externals[key]

    def _lookup(self, handle: int):
        """ESYS_TR for a persistent handle or NV index, None if the TPM has nothing there."""
        try:
            return self.ctx.tr_from_tpmpublic(handle)
        except self.t.TSS2_Exception as exc:
            if exc.error == self.t.TPM2_RC.HANDLE:
                return None
            raise TpmError(
                f"reading handle 0x{handle:08x} from the TPM at '{self.tcti}' failed: {refusal(exc, self.tcti)}"
            ) from exc

    def srk(self, required: bool = True):
        if self._srk is None:
            self._srk = self._lookup(templates.SRK_HANDLE)
            if self._srk is not None:
                self._check_srk(self._srk)
        if self._srk is None and required:
            raise BackendError(
                f"no storage key at 0x{templates.SRK_HANDLE:08x} on the TPM at '{self.tcti}': "
                "the node is not enrolled; run the enroll playbook (ironclaw_node state=present)"
            )
        return self._srk

    def _check_srk(self, handle) -> None:
        t = self.t
        with tpm_errors("reading the SRK public area"):
            pub, name, _qname = self.ctx.read_public(handle)
        self._srk_public = (pub, bytes(name))
        area = pub.publicArea
        need = t.TPMA_OBJECT.RESTRICTED | t.TPMA_OBJECT.DECRYPT | t.TPMA_OBJECT.FIXEDTPM | t.TPMA_OBJECT.FIXEDPARENT
        if (
            area.type != t.TPM2_ALG.ECC
            or area.parameters.eccDetail.curveID != t.TPM2_ECC.NIST_P256
            or (area.objectAttributes & need) != need
        ):
            raise BackendError(
                f"the key persisted at 0x{templates.SRK_HANDLE:08x} on '{self.tcti}' is not an ECC P-256 storage key; "
                "another tool owns that handle. Evict it deliberately (tpm2_evictcontrol) or use another TPM"
            )

    def epoch_nv(self, required: bool = True):
        if self._epoch_nv is None:
            self._epoch_nv = self._lookup(templates.EPOCH_NV_INDEX)
            if self._epoch_nv is not None:
                self._check_epoch_nv(self._epoch_nv)
        if self._epoch_nv is None and required:
            raise BackendError(
                f"no epoch counter at NV 0x{templates.EPOCH_NV_INDEX:08x} on the TPM at '{self.tcti}': "
                "the node is not enrolled; run the enroll playbook (ironclaw_node state=present)"
            )
        return self._epoch_nv

    def _check_epoch_nv(self, handle) -> None:
        t = self.t
        with tpm_errors("reading the epoch counter's NV public area"):
            pub, _name = self.ctx.nv_read_public(handle)
        expected = templates.epoch_nv_public().nvPublic
        attrs = pub.nvPublic.attributes & ~t.TPMA_NV.WRITTEN
        if attrs != expected.attributes or pub.nvPublic.dataSize != expected.dataSize:
            raise BackendError(
                f"NV index 0x{templates.EPOCH_NV_INDEX:08x} on '{self.tcti}' exists "
                "but is not an ironclaw epoch counter "
                f"(attributes 0x{int(pub.nvPublic.attributes):08x}); another tool owns it"
            )
        if not pub.nvPublic.attributes & t.TPMA_NV.WRITTEN:
            raise BackendError(
                f"the epoch counter at 0x{templates.EPOCH_NV_INDEX:08x} was defined but never incremented "
                "(an interrupted enrollment); run ironclaw_node state=present again"
            )

    def name(self, handle) -> bytes:
        return bytes(self.ctx.tr_get_name(handle))

    # -- epoch -------------------------------------------------------------
    def epoch(self) -> int:
        nv = self.epoch_nv()
        with tpm_errors("reading the epoch counter"):
            data = bytes(self.ctx.nv_read(nv, templates.EPOCH_NV_SIZE, 0, auth_handle=nv))
        return int.from_bytes(data, "big")

    def bump_epoch(self) -> int:
        """Increment the epoch: every approval ever signed for this node stops working."""
        nv = self.epoch_nv()
        with tpm_errors("incrementing the epoch counter"):
            self.ctx.nv_increment(nv, auth_handle=nv)
        return self.epoch()

    # -- provisioning --------------------------------------------------------
    def plan_provision(self) -> list[str]:
        plan = []
        if self.srk(required=False) is None:
            plan.append(f"create the ECC P-256 SRK and persist it at 0x{templates.SRK_HANDLE:08x}")
        nv = self._lookup(templates.EPOCH_NV_INDEX)
        if nv is None:
            plan.append(f"define the epoch counter at NV 0x{templates.EPOCH_NV_INDEX:08x}")
        else:
            pub, _name = self.ctx.nv_read_public(nv)
            if not pub.nvPublic.attributes & self.t.TPMA_NV.WRITTEN:
                plan.append("initialise the epoch counter")
            self.ctx.tr_close(nv)
        return plan

    def provision(self) -> list[str]:
        t = self.t
        done = []
        if self.srk(required=False) is None:
            with tpm_errors("creating the SRK", "is the owner hierarchy password set? ironclaw expects it empty"):
                handle, *_created = self.ctx.create_primary(None, templates.srk_public(), t.ESYS_TR.OWNER)
                try:
                    self._srk = self.ctx.evict_control(t.ESYS_TR.OWNER, handle, templates.SRK_HANDLE)
                finally:
                    self.ctx.flush_context(handle)
            done.append(f"created the SRK at 0x{templates.SRK_HANDLE:08x}")
        nv = self._lookup(templates.EPOCH_NV_INDEX)
        if nv is None:
            with tpm_errors(
                "defining the epoch counter", "is the owner hierarchy password set? ironclaw expects it empty"
            ):
                nv = self.ctx.nv_define_space(b"", templates.epoch_nv_public(), auth_handle=t.ESYS_TR.OWNER)
            done.append(f"defined the epoch counter at NV 0x{templates.EPOCH_NV_INDEX:08x}")
        pub, _name = self.ctx.nv_read_public(nv)
        if not pub.nvPublic.attributes & t.TPMA_NV.WRITTEN:
            # A counter can be read (and used in PolicyNV) only once written.
            with tpm_errors("initialising the epoch counter"):
                self.ctx.nv_increment(nv, auth_handle=nv)
            done.append("initialised the epoch counter")
        self.ctx.tr_close(nv)
        self._epoch_nv = None
        self.epoch_nv()
        return done

    # -- facts -------------------------------------------------------------
    def read_pcrs(self, selection: PcrSelection) -> dict[str, bytes]:
        values: dict[str, bytes] = {}
        for bank, indices in selection.banks:
            for start in range(0, len(indices), _PCR_READ_MAX):
                chunk = indices[start : start + _PCR_READ_MAX]
                sel = self.t.TPML_PCR_SELECTION.parse(f"{bank}:{','.join(str(i) for i in chunk)}")
                with tpm_errors(f"reading PCRs {bank}:{chunk}"):
                    _counter, sel_out, digests = self.ctx.pcr_read(sel)
                got = [bytes(d) for d in digests]
                if len(got) != len(chunk) or any(len(d) != BANKS[bank][1] for d in got):
                    raise TpmError(f"the TPM at '{self.tcti}' has no active {bank} bank for PCRs {chunk}")
                for i, value in zip(chunk, got, strict=True):
                    values[f"{bank}:{i}"] = value
        return values

    def facts(self, pcrs: PcrSelection | None = None) -> NodeFacts:
        srk = self.srk(required=False)
        nv = self.epoch_nv(required=False)
        facts = NodeFacts(backend=self.backend, provisioned=srk is not None and nv is not None)
        if srk is None:
            facts.missing.append("srk")
        else:
            if self._srk_public is None:  # just created by provision(): not read yet
                with tpm_errors("reading the SRK public area"):
                    pub, name, _q = self.ctx.read_public(srk)
                self._srk_public = (pub, bytes(name))
            pub, name = self._srk_public
            facts.node_name = name
            facts.node_public = pub.marshal()
        if nv is None:
            facts.missing.append("epoch counter")
        else:
            facts.epoch_nv_index = templates.EPOCH_NV_INDEX
            facts.epoch_nv_name = self.name(nv)
            facts.epoch = self.epoch()
        if pcrs is not None:
            facts.pcr_selection = str(pcrs)
            facts.pcr_values = self.read_pcrs(pcrs)
            facts.pcr_digest = pcrs.digest(facts.pcr_values)
        return facts
