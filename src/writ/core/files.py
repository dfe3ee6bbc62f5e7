"""A file written whole or not at all: written beside its name, then renamed over it.

One mechanism for every file writ writes that a reader may open at any moment, or that a
failure must not leave half-written: a checkpoint (a signer may die mid-write), ``writ audit
export --out`` and ``writ postmortem --out`` (a full disk must not cut an earlier export in
half). The temporary file is made by :func:`tempfile.mkstemp` (a new name no one could
plant a symlink at, the directory may be ``/tmp``), flushed to disk, and renamed over
``path``; on any error it is removed and ``path`` is as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO

__all__ = ["replacing"]


@contextlib.contextmanager
def replacing(
    path: str | os.PathLike[str], mode: int, newline: str | None = None
) -> Iterator[IO[str]]:
    """A text file that takes ``path``'s place, with ``mode``, when the block ends without
    an error (``path`` itself is replaced: a symlink there is replaced, not followed)."""
    target = os.fspath(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=os.path.dirname(target) or "."
    )
    try:
        os.fchmod(fd, mode)
        with open(fd, "w", encoding="utf-8", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
