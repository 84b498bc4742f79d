"""A local EK certificate authority for tests, made with swtpm-tools (swtpm_localca, swtpm_setup).

Each :class:`EkCa` lives in its own temporary directory: a root CA and an
intermediate ("issuercert") that swtpm_localca creates on first use, and the
setup.conf / swtpm-localca.conf that point swtpm_setup at them. Nothing is
written to /var/lib/swtpm-localca or a home directory.

``EkCa.manufacture(state_dir)`` writes a fresh TPM 2.0 state the way a vendor
would: EKs created, their certificates signed by this CA and stored in NV
(swtpm 0.7 writes RSA-2048 at 0x01c00002 and ECC P-384 at 0x01c00016). Give it
to :class:`rig.swtpm.Swtpm` as ``manufacture=ca.manufacture``.

``EkCa.trust_dir`` is what a controller puts in ``ironclaw_ek_ca_dir``: the
root and the intermediate as PEM files.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path

from .swtpm import RigError

# A placeholder RSA modulus: swtpm_localca creates the CA on its first call, and
# that first call needs some EK to certify. The certificate it writes also
# serves tests as a validly signed certificate whose key belongs to no TPM.
_PLACEHOLDER_MODULUS = "c3" * 256
_TPM_FACTS = [
    "--tpm-spec-family",
    "2.0",
    "--tpm-spec-level",
    "0",
    "--tpm-spec-revision",
    "164",
    "--tpm-manufacturer",
    "id:00001014",
    "--tpm-model",
    "swtpm",
    "--tpm-version",
    "id:20191023",
]
ROOT_CERT = "swtpm-localca-rootca-cert.pem"
ISSUER_CERT = "issuercert.pem"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise RigError(f"{name} not found: install the Debian package swtpm-tools (scripts/bootstrap does)")
    return path


def _run(cmd: list[str], what: str, log: Path) -> None:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = log.read_text(errors="replace") if log.exists() else ""
        raise RigError(f"{what} failed ({proc.returncode}): {proc.stdout}{proc.stderr}{detail}")


class EkCa:
    """One local EK CA (root + intermediate) in a temporary directory; ``close()`` removes it."""

    def __init__(self, name: str = "ironclaw-test", root: Path | None = None) -> None:
        self.name = name
        if root is None:
            self.root = Path(tempfile.mkdtemp(prefix=f"ironclaw-ekca-{name}-"))
            self._finalizer = weakref.finalize(self, shutil.rmtree, self.root, True)
        else:
            # A CA that outlives this object (the node lab's, under its instance directory): made on first use,
            # reused afterwards, removed with that directory.
            self.root = Path(root)
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._finalizer = weakref.finalize(self, lambda: None)
        made = (self.root / "trust" / "root.pem").exists()
        self.ca_dir = self.root / "ca"
        self.ca_dir.mkdir(exist_ok=True)
        self.log = self.root / "ca.log"
        self.localca_conf = self.root / "swtpm-localca.conf"
        self.localca_conf.write_text(
            f"statedir = {self.ca_dir}\n"
            f"signingkey = {self.ca_dir / 'signkey.pem'}\n"
            f"issuercert = {self.ca_dir / ISSUER_CERT}\n"
            f"certserial = {self.ca_dir / 'certserial'}\n"
        )
        self.localca_options = self.root / "swtpm-localca.options"
        self.localca_options.write_text(
            f"--platform-manufacturer {name}\n--platform-version 2.1\n--platform-model swtpm\n"
        )
        self.setup_conf = self.root / "swtpm_setup.conf"
        self.setup_conf.write_text(
            f"create_certs_tool = {_tool('swtpm_localca')}\n"
            f"create_certs_tool_config = {self.localca_conf}\n"
            f"create_certs_tool_options = {self.localca_options}\n"
            "active_pcr_banks = sha256\n"
        )
        out = self.root / "placeholder"
        out.mkdir(exist_ok=True)
        self.trust_dir = self.root / "trust"
        if made:
            self.placeholder_cert_der = (out / "ek.cert").read_bytes()
            return
        _run(
            [
                _tool("swtpm_localca"),
                "--type",
                "ek",
                "--ek",
                _PLACEHOLDER_MODULUS,
                "--dir",
                str(out),
                "--tpm2",
                "--configfile",
                str(self.localca_conf),
                "--optsfile",
                str(self.localca_options),
                "--logfile",
                str(self.log),
                *_TPM_FACTS,
            ],
            f"creating the local EK CA in {self.ca_dir}",
            self.log,
        )
        # DER, signed by this CA's intermediate, for an RSA key no TPM holds.
        self.placeholder_cert_der = (out / "ek.cert").read_bytes()
        self.trust_dir.mkdir(exist_ok=True)
        shutil.copy(self.ca_dir / ROOT_CERT, self.trust_dir / "root.pem")
        shutil.copy(self.ca_dir / ISSUER_CERT, self.trust_dir / "intermediate.pem")

    @property
    def root_pem(self) -> bytes:
        return (self.ca_dir / ROOT_CERT).read_bytes()

    @property
    def intermediate_pem(self) -> bytes:
        return (self.ca_dir / ISSUER_CERT).read_bytes()

    def manufacture(self, state_dir: Path) -> None:
        """Write a new TPM 2.0 state into state_dir with EK certificates from this CA in NV."""
        _run(
            [
                _tool("swtpm_setup"),
                "--tpm2",
                "--tpmstate",
                str(state_dir),
                "--create-ek-cert",
                "--config",
                str(self.setup_conf),
                "--logfile",
                str(self.log),
                "--overwrite",
            ],
            f"manufacturing a TPM state in {state_dir} with EK certificates from {self.name}",
            self.log,
        )

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> EkCa:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EkCa {self.name} {self.root}>"
