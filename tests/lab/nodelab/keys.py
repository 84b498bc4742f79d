"""SSH keys of the lab: one controller key, and per node a host key and a key for its root."""

from __future__ import annotations

from pathlib import Path

from nodelab.system import run


def ensure_keypair(path: Path, comment: str) -> str:
    """Create an Ed25519 key pair at `path` (and `path`.pub) unless it exists; return the public key line."""
    public = Path(f"{path}.pub")
    if not (path.exists() and public.exists()):
        path.unlink(missing_ok=True)
        public.unlink(missing_ok=True)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return public.read_text().strip()


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
