"""The Ed25519 keys that sign checkpoints (:mod:`writ.evidence.checkpoint`): PEM files,
the private key PKCS#8 (written mode 0600, refused when other users may read it), the public
key SubjectPublicKeyInfo next to it as ``KEY.pub`` (``writ audit keygen``); and reading the
small files a key or a checkpoint is."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from writ.core.errors import Invalid

__all__ = [
    "MAX_FILE",
    "CheckpointError",
    "generate_key",
    "key_id",
    "load_private_key",
    "raw_public",
    "read_small",
    "write_key",
]

MAX_FILE = 64 << 10  # a checkpoint or a PEM key is well under 1 KiB; a larger file is refused


class CheckpointError(Invalid):
    """A checkpoint file or key that cannot be used (unreadable, malformed, bad signature)."""


def read_small(path: str | Path, what: str, private: bool = False) -> bytes:
    """``path``'s bytes, refused unread past :data:`MAX_FILE` (a checkpoint or a key is
    small; a file of gigabytes, or ``/dev/zero``, is not one). A ``private`` key that
    other users may read is refused (its group may: the server's, say)."""
    try:
        with open(path, "rb") as f:
            if private and os.fstat(f.fileno()).st_mode & 0o004:
                raise CheckpointError(
                    f"{what} {path}: other users may read it (mode "
                    f"{os.fstat(f.fileno()).st_mode & 0o777:o}); anyone who read it can "
                    f"sign checkpoints: chmod 600 {path}, and make a new key if it was shared"
                )
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE:
        raise CheckpointError(f"{path} is larger than {MAX_FILE} bytes: not a {what}")
    return data


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:16]


def write_key(path: str | Path, key: Ed25519PrivateKey | None = None) -> tuple[Path, Path]:
    """Write a private key (PEM, mode 0600) and its public key (``PATH.pub``), both new
    files: either name taken (a file, a symlink, even a dangling one) is refused, so a
    second run never replaces the public key verifiers trust. A write that fails is
    :class:`CheckpointError`, and leaves neither file behind."""
    key = key or generate_key()
    priv = Path(path)
    pub = priv.with_name(priv.name + ".pub")
    for taken, what in ((priv, "a signing key"), (pub, "the public key verifiers trust")):
        if os.path.lexists(taken):  # never written through: a symlink may point anywhere
            there = "is a symlink" if os.path.islink(taken) else "exists"
            raise CheckpointError(f"{taken} {there}: refusing to overwrite {what}")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        priv.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot write {priv}: {exc.strerror or exc}") from None
    _new_file(priv, pem, 0o600)
    try:
        _new_file(pub, public, 0o644)
    except CheckpointError:
        with contextlib.suppress(OSError):  # made just now: no key without its public key
            priv.unlink()
        raise
    return priv, pub


def _new_file(path: Path, data: bytes, mode: int) -> None:
    """``data`` in a file made at ``path`` (never one already there, nor through a symlink)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise CheckpointError(f"{path} exists: refusing to overwrite it") from None
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    data = read_small(path, "signing key", private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"{path} is not an Ed25519 key (writ audit keygen makes one)")
    return key
