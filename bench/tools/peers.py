"""The tools users would pick instead: clevis and systemd-creds, one sealed file per secret.

Both seal one secret per invocation, so protecting N secrets is N processes,
each with its own TPM work (a primary key, a session, a create or an unseal).
Both talk to the same swtpm (through the command counter) by a TCTI string.
"""

from __future__ import annotations

import os
import subprocess

from bench.tools import BenchError, Tool

TIMEOUT = 120


class _OneProcessPerSecret(Tool):
    """Seal: secret on stdin, sealed file from stdout. Unseal: sealed file on stdin, secret from stdout."""

    per_secret_process = True
    suffix = ""

    def __init__(self, tpm, workdir, secrets) -> None:
        super().__init__(tpm, workdir, secrets)
        self.unsealed: dict[str, bytes] = {}
        self.env = dict(os.environ, TSS2_LOG="all+NONE")

    def seal_argv(self, name: str) -> list[str]:
        raise NotImplementedError

    def unseal_argv(self, name: str) -> list[str]:
        raise NotImplementedError

    def sealed_path(self, name: str):
        return self.workdir / f"{name}.{self.suffix}"

    def _call(self, argv: list[str], *, stdout, stdin=None, data: bytes | None = None) -> bytes:
        self.launches += 1
        # An argument list of fixed words and our own TCTI string, never a shell.
        done = subprocess.run(  # noqa: S603
            argv,
            input=data,
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=self.env,
            timeout=TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip()
            raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {error}")
        self.released()
        return done.stdout

    def seal(self) -> None:
        for secret in self.secrets:
            with open(self.sealed_path(secret.name), "wb") as out:
                self._call(self.seal_argv(secret.name), stdout=out, data=secret.data)

    def unseal(self) -> None:
        for secret in self.secrets:
            with open(self.sealed_path(secret.name), "rb") as sealed:
                argv = self.unseal_argv(secret.name)
                self.unsealed[secret.name] = self._call(argv, stdout=subprocess.PIPE, stdin=sealed)

    def check(self) -> None:
        wrong = [s.name for s in self.secrets if self.unsealed.get(s.name) != s.data]
        if wrong:
            raise BenchError(f"{self.label}: {len(wrong)} secret(s) unsealed to other bytes, e.g. {wrong[0]}")


class Clevis(_OneProcessPerSecret):
    """``clevis encrypt tpm2 '{}'`` / ``clevis decrypt``: a JWE per secret, no PCR binding."""

    key = "clevis"
    label = "clevis"
    binaries = ("clevis", "clevis-encrypt-tpm2", "clevis-decrypt-tpm2", "jose", "tpm2_createprimary")
    suffix = "jwe"

    def __init__(self, tpm, workdir, secrets) -> None:
        super().__init__(tpm, workdir, secrets)
        # The clevis tpm2 pin runs tpm2-tools, which read their TCTI from here.
        self.env["TPM2TOOLS_TCTI"] = self.tcti

    def seal_argv(self, name: str) -> list[str]:
        return ["clevis", "encrypt", "tpm2", "{}"]

    def unseal_argv(self, name: str) -> list[str]:
        return ["clevis", "decrypt"]


class SystemdCreds(_OneProcessPerSecret):
    """``systemd-creds encrypt --with-key=tpm2`` / ``decrypt``: a credential per secret.

    PCR 7 is bound, systemd-creds' default: systemd 252 seals with an empty
    PCR mask (``--tpm2-pcrs=``) but then refuses to decrypt ("TPM2 PCR bank
    invalid or not supported"), so the default is what a user can use.
    """

    key = "systemd-creds"
    label = "systemd-creds"
    binaries = ("systemd-creds",)
    suffix = "cred"

    def __init__(self, tpm, workdir, secrets) -> None:
        super().__init__(tpm, workdir, secrets)
        # Warnings about the software TPM's unset PCRs are expected here.
        self.env["SYSTEMD_LOG_LEVEL"] = "err"

    def seal_argv(self, name: str) -> list[str]:
        return [
            "systemd-creds",
            "encrypt",
            "--with-key=tpm2",
            f"--tpm2-device={self.tcti}",
            f"--name={name}",
            "-",
            "-",
        ]

    def unseal_argv(self, name: str) -> list[str]:
        return ["systemd-creds", "decrypt", f"--tpm2-device={self.tcti}", f"--name={name}", "-", "-"]
