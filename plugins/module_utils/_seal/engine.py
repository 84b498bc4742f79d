# Copyright: ironclaw.sealed contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sealing, unsealing and verifying one VM's secrets on a node.

Each operation plans first (what must change?) and applies only outside check
mode. TPM work is per VM: at most one seal (new keyslot) or one unseal (VRK),
never per secret. Plaintext lives only in memory here; results carry names,
generations and actions, never secret bytes or hashes of them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from datetime import datetime

from ansible_collections.ironclaw.sealed.plugins.module_utils._common import validate
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.errors import (
    InputError,
    IronclawError,
    PolicyError,
    VerificationError,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._common.files import (
    ensure_dir,
    read_regular,
    write_atomic,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format import canonical
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.blob import (
    MAX_PLAINTEXT_LEN,
    check_blob_identity,
    decrypt_blob,
    encrypt_blob,
)
from ansible_collections.ironclaw.sealed.plugins.module_utils._format.keyslot import Keyslot
from ansible_collections.ironclaw.sealed.plugins.module_utils._manifest.node_check import verify_cached
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.keyname import parse_policy_key_public
from ansible_collections.ironclaw.sealed.plugins.module_utils._policy.pcrs import PcrSelection
from ansible_collections.ironclaw.sealed.plugins.module_utils._seal.vmdir import VmDir

VRK_SIZE = 32


@dataclass
class Secret:
    name: str
    data: bytes


def load_secrets(items: list[dict]) -> list[Secret]:
    """Module `secrets` entries ({name, src | content | content_base64}) → Secret, read once, checked."""
    seen, out = set(), []
    for item in items:
        name = validate.secret_name(item.get("name"))
        if name in seen:
            raise InputError(f"secret '{name}' is listed twice")
        seen.add(name)
        given = [k for k in ("src", "content", "content_base64") if item.get(k) is not None]
        if len(given) != 1:
            raise InputError(f"secret '{name}': give exactly one of src, content, content_base64")
        if item.get("src") is not None:
            try:
                data = read_regular(item["src"], f"secret '{name}' source file", MAX_PLAINTEXT_LEN)
            except FileNotFoundError:
                raise InputError(f"secret '{name}': source file {item['src']} does not exist") from None
        elif item.get("content") is not None:
            data = item["content"].encode("utf-8")
        else:
            data = canonical.b64decode(item["content_base64"], f"secret '{name}' content_base64")
        if len(data) > MAX_PLAINTEXT_LEN:
            raise InputError(f"secret '{name}' is {len(data)} bytes; at most {MAX_PLAINTEXT_LEN} are supported")
        out.append(Secret(name, data))
    return out


def _require_approval(vm: VmDir, given):
    approval = given if given is not None else vm.approval(required=False)
    if approval is None:
        raise InputError(
            f"VM {vm.vmid} is sealed on this node but no approval was given and none is installed; "
            "the controller must sign one (ironclaw_policy state=approved)"
        )
    return approval


def approval_differs(installed, new) -> bool:
    """Approvals are re-signed on every run (fresh ECDSA nonce, new issued_at); what they authorize is what counts."""
    if installed is None:
        return True
    return (installed.node_name, installed.epoch, installed.pcrs, installed.approved_policy, installed.key_name) != (
        new.node_name,
        new.epoch,
        new.pcrs,
        new.approved_policy,
        new.key_name,
    )


def _check_pcr_cover(approval, pcrs: PcrSelection | None) -> None:
    if pcrs is None:
        return
    got = PcrSelection.parse(approval.pcrs.selection) if approval.pcrs else None
    if got != pcrs:
        raise PolicyError(
            f"the policy asks for PCRs {pcrs} but the approval binds {got or 'no PCRs'}; "
            "sign the approval with the same PCR selection"
        )


@dataclass
class SealPlan:
    """What sealing the listed secrets changes: nothing is written while it is made (it holds the VRK in memory when
    the keyslot exists, to compare contents)."""

    vm: VmDir
    keyslot: Keyslot | None
    keyslot_id: str
    key_name: bytes | None
    policy_key_public: bytes | None
    migratable: bool
    vrk: bytes | None = field(repr=False)
    approval: object
    approval_changed: bool
    actions: list = field(repr=False)  # (Secret, generation, action): the plaintext too
    before: dict = field(default_factory=dict)

    @property
    def keyslot_action(self) -> str:
        return "created" if self.keyslot is None else "unchanged"

    @property
    def changed(self) -> bool:
        return self.keyslot is None or self.approval_changed or any(a != "unchanged" for _s, _g, a in self.actions)

    def result(self) -> dict:
        """The module's result for this plan (check mode returns it as is)."""
        after_blobs = dict(self.before["blobs"])
        for secret, generation, _a in self.actions:
            after_blobs[secret.name] = generation
        return {
            "changed": self.changed,
            "keyslot": {"keyslot_id": self.keyslot_id, "action": self.keyslot_action, "migratable": self.migratable},
            "approval_installed": self.approval_changed,
            "blobs": [{"name": s.name, "generation": g, "action": a} for s, g, a in self.actions],
            "diff": {"before": self.before, "after": {"keyslot": self.keyslot_id, "blobs": after_blobs}},
        }


def plan_seal(
    backend,
    vm: VmDir,
    secrets: list[Secret],
    *,
    migratable: bool,
    pcrs: PcrSelection | None,
    policy_key_public: bytes | None,
    approval,
) -> SealPlan:
    """What creating the keyslot if absent and making every listed secret's blob hold exactly its content changes."""
    keyslot = vm.keyslot(required=False)
    key_name = None
    if policy_key_public is not None:
        _key, key_name = parse_policy_key_public(policy_key_public, "policy_key")
    approval_changed = False
    if approval is not None:
        _check_pcr_cover(approval, pcrs)
        approval_changed = approval_differs(vm.approval(required=False), approval)
    before = {"keyslot": keyslot.keyslot_id if keyslot else None, "blobs": {}}
    actions = []
    if keyslot is None:
        if key_name is None:
            raise InputError(
                f"VM {vm.vmid} has no keyslot on this node yet: "
                "policy_key (from ironclaw_policy) is required to create one"
            )
        keyslot_id = os.urandom(16).hex()
        vrk = None
        for secret in secrets:
            actions.append((secret, 1, "created"))
    else:
        backend.check_keyslot_node(keyslot)
        if key_name is not None and key_name != keyslot.policy_key_name:
            raise PolicyError(
                f"VM {vm.vmid}'s keyslot trusts policy key {keyslot.policy_key_name.hex()[:16]}…, not the given "
                f"{key_name.hex()[:16]}… (unknown policy key); a keyslot's policy key cannot change"
            )
        if keyslot.migratable != migratable:
            raise InputError(
                f"VM {vm.vmid}'s keyslot was created with migratable={str(keyslot.migratable).lower()}; "
                f"the policy asks for migratable={str(migratable).lower()}. "
                "That cannot change in place: destroy and re-provision the VM"
            )
        keyslot_id = keyslot.keyslot_id
        approval = _require_approval(vm, approval)
        _check_pcr_cover(approval, pcrs)
        vrk = backend.unseal(keyslot, approval)
        existing = set(vm.blob_names())
        for name in existing:
            before["blobs"][name] = vm.read_blob(name).header.generation
        for secret in secrets:
            if secret.name not in existing:
                actions.append((secret, 1, "created"))
                continue
            parsed = vm.read_blob(secret.name)
            what = f"blob '{secret.name}' of VM {vm.vmid}"
            check_blob_identity(
                parsed.header, vmid=vm.vmid, vm_uuid=vm.vm_uuid, name=secret.name, keyslot_id=keyslot_id, what=what
            )
            try:
                current = decrypt_blob(vrk, parsed, what)
            except IronclawError as exc:
                raise type(exc)(f"{exc}. Move the file aside (keep it as evidence) and re-run to seal afresh") from exc
            if hmac.compare_digest(current, secret.data):
                actions.append((secret, parsed.header.generation, "unchanged"))
            else:
                actions.append((secret, parsed.header.generation + 1, "resealed"))
    return SealPlan(
        vm=vm,
        keyslot=keyslot,
        keyslot_id=keyslot_id,
        key_name=key_name,
        policy_key_public=policy_key_public,
        migratable=migratable,
        vrk=vrk,
        approval=approval,
        approval_changed=approval_changed,
        actions=actions,
        before=before,
    )


def apply_seal(backend, plan: SealPlan) -> dict:
    """Write what the plan says: the keyslot first (a run cut short leaves a keyslot and fewer blobs, and a re-run
    finishes), then the approval, then each blob that changed."""
    vm, vrk = plan.vm, plan.vrk
    if plan.changed:
        vm.ensure()
        if plan.keyslot is None:
            vrk = os.urandom(VRK_SIZE)
            sealed = backend.seal(
                vrk,
                keyslot_id=plan.keyslot_id,
                vmid=vm.vmid,
                vm_uuid=vm.vm_uuid,
                policy_key_name=plan.key_name,
                migratable=plan.migratable,
            )
            keyslot = Keyslot(
                vmid=vm.vmid,
                vm_uuid=vm.vm_uuid,
                keyslot_id=plan.keyslot_id,
                created=canonical.utc_timestamp(),
                migratable=plan.migratable,
                node_name=backend.identity()[0],
                policy_key_name=plan.key_name,
                policy_key_public=plan.policy_key_public,
                sealed=sealed,
            )
            vm.write(vm.keyslot_path, keyslot.to_bytes())
        if plan.approval is not None and plan.approval_changed:
            vm.write(vm.approval_path, plan.approval.to_bytes())
        for secret, generation, action in plan.actions:
            if action == "unchanged":
                continue
            blob = encrypt_blob(
                vrk,
                vmid=vm.vmid,
                vm_uuid=vm.vm_uuid,
                name=secret.name,
                keyslot_id=plan.keyslot_id,
                generation=generation,
                plaintext=secret.data,
            )
            vm.write(vm.blob_path(secret.name), blob)
    return plan.result()


def seal(backend, vm: VmDir, secrets: list[Secret], *, check_mode: bool, **options) -> dict:
    """Create the keyslot if absent and make every listed secret's blob hold exactly its content (`options` are
    plan_seal's)."""
    plan = plan_seal(backend, vm, secrets, **options)
    return plan.result() if check_mode else apply_seal(backend, plan)


def plan_approval(backend, vm: VmDir, approval) -> dict:
    """Check an approval against this VM's keyslot and node in software; whether installing it changes anything."""
    keyslot = vm.keyslot()
    backend.check_keyslot_node(keyslot)
    backend.check_approval(keyslot, approval)
    return {"changed": approval_differs(vm.approval(required=False), approval), "epoch": approval.epoch}


def apply_approval(vm: VmDir, approval, plan: dict) -> dict:
    if plan["changed"]:
        vm.write(vm.approval_path, approval.to_bytes())
    return plan


def install_approval(backend, vm: VmDir, approval, *, check_mode: bool) -> dict:
    """Check an approval against this VM's keyslot and node in software and install it."""
    plan = plan_approval(backend, vm, approval)
    return plan if check_mode else apply_approval(vm, approval, plan)


def open_all(backend, vm: VmDir, approval=None, names: list[str] | None = None, *, pinned=None):
    """Unseal the VRK once and authenticate each blob; yields (name, header, plaintext | None, error | None).

    With `pinned` (a verified manifest), the very bytes used are those the manifest names: the keyslot and each
    blob are hashed as they are read, so nothing swapped after the verification is unsealed.
    """
    data, keyslot = vm.read_keyslot()
    if pinned is not None:
        _pin(vm, "keyslot.json", data, pinned.keyslot.sha256 if pinned.keyslot else None)
    approval = _require_approval(vm, approval)
    vrk = backend.unseal(keyslot, approval)
    present = vm.blob_names()
    if names is not None:
        missing = sorted(set(names) - set(present))
        if missing:
            raise InputError(
                f"VM {vm.vmid} has no sealed secret named {', '.join(missing)} (it has: {', '.join(present)})"
            )
        present = [n for n in present if n in set(names)]
    recorded = {blob.name: blob.sha256 for blob in pinned.blobs} if pinned is not None else {}
    for name in present:
        what = f"blob '{name}' of VM {vm.vmid}"
        try:
            data, parsed = vm.read_blob_bytes(name)
            if pinned is not None:
                _pin(vm, f"blob '{name}'", data, recorded.get(name))
            check_blob_identity(
                parsed.header, vmid=vm.vmid, vm_uuid=vm.vm_uuid, name=name, keyslot_id=keyslot.keyslot_id, what=what
            )
            yield name, parsed.header, decrypt_blob(vrk, parsed, what), None
        except IronclawError as exc:
            yield name, None, None, str(exc)


def _pin(vm: VmDir, what: str, data: bytes, sha256: str | None) -> None:
    if sha256 is None or hashlib.sha256(data).hexdigest() != sha256:
        raise VerificationError(
            f"VM {vm.vmid}'s {what} changed since it was verified against its manifest (or is not in it): "
            "nothing was unsealed; re-run"
        )


def verify(backend, vm: VmDir, approval=None) -> dict:
    """Test-unseal every blob in memory; per-blob ok/error, never plaintext or a hash of it."""
    results = []
    for name, header, plaintext, error in open_all(backend, vm, approval):
        entry = {"name": name, "ok": error is None}
        if header is not None:
            entry.update(generation=header.generation, size=header.length)
        if error:
            entry["error"] = error
        results.append(entry)
        del plaintext
    failed = [r["name"] for r in results if not r["ok"]]
    return {"blobs": results, "failed": failed, "verified": not failed and bool(results)}


@dataclass
class UnsealPlan:
    """Which secrets unsealing writes to dest (their plaintext in memory), after every check passed."""

    dest: str
    files: list[dict]
    manifest_version: int
    writes: list[tuple[str, bytes]] = field(repr=False)  # (path, plaintext)

    @property
    def changed(self) -> bool:
        return bool(self.writes)

    def result(self) -> dict:
        return {"changed": self.changed, "files": self.files, "manifest_version": self.manifest_version}


def plan_unseal(
    backend,
    vm: VmDir,
    dest: str,
    *,
    names=None,
    approval=None,
    cluster: str,
    vm_ctime: int | None,
    now: datetime,
) -> UnsealPlan:
    """Verify, unseal in memory and compare with dest/<name>; nothing is written.

    First the manifest rules 1-5 against this node's cached manifest, trust roots and floor record (DESIGN §7 A9):
    an old copy of a blob put back from a backup, a swapped keyslot or an expired manifest writes nothing.
    """
    if os.path.islink(dest):
        raise InputError(f"dest {dest} is a symlink; refusing to write secrets through it")
    manifest = verify_cached(
        vm.state_dir, vmid=vm.vmid, vm_uuid=vm.vm_uuid, cluster=cluster, vm_ctime=vm_ctime, now=now
    )
    opened = list(open_all(backend, vm, approval, names, pinned=manifest))
    bad = [(n, e) for n, _h, _p, e in opened if e]
    if bad:
        raise InputError(f"not unsealing: {'; '.join(e for _n, e in bad)}")
    # Check every destination before writing any, so a refusal leaves dest as it was.
    results, writes = [], []
    for name, _header, plaintext, _e in opened:
        path = os.path.join(dest, name)
        same = False
        if os.path.lexists(path):
            if os.path.islink(path) or not os.path.isfile(path):
                raise InputError(f"{path} exists and is not a regular file; refusing to replace it")
            same = (
                hmac.compare_digest(read_regular(path, f"{path}"), plaintext)
                and (os.stat(path).st_mode & 0o777) == 0o600
            )
        results.append({"name": name, "path": path, "action": "unchanged" if same else "written"})
        if not same:
            writes.append((path, plaintext))
    return UnsealPlan(dest=dest, files=results, manifest_version=manifest.version, writes=writes)


def apply_unseal(plan: UnsealPlan) -> dict:
    if plan.writes:
        ensure_dir(plan.dest, 0o700)
        for path, plaintext in plan.writes:
            write_atomic(path, plaintext, 0o600)
    return plan.result()


def unseal_to(
    backend,
    vm: VmDir,
    dest: str,
    *,
    names=None,
    approval=None,
    check_mode: bool,
    cluster: str,
    vm_ctime: int | None,
    now: datetime,
) -> dict:
    """Write each secret to dest/<name> (0600), only where the content differs (plan_unseal checks first)."""
    plan = plan_unseal(backend, vm, dest, names=names, approval=approval, cluster=cluster, vm_ctime=vm_ctime, now=now)
    return plan.result() if check_mode else apply_unseal(plan)
