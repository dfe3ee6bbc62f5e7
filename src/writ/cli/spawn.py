"""Start ``writ run``'s command so that it dies with ``writ run``.

``writ run`` stops its command when the lease is lost — but only while ``writ run`` is alive.
SIGKILLed (the OOM killer, ``kill -9``, a container runtime), it can stop nothing, and the
command would go on writing with nobody renewing its lease. On Linux the child asks the
kernel, between ``fork`` and ``exec``, for a *parent-death signal*
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``): when the thread that started it exits, however it
exits, the kernel sends the child SIGKILL. If ``writ run`` died before the request took
effect, the child's parent is already someone else: it checks ``getppid()`` against the pid
it was started by and exits at once.

What remains possible is in docs/cli.md ("When writ run itself is killed"): the signal
reaches the child only, never its own children (a grandchild is re-parented and runs on);
it is cleared when the child execs a set-user-ID or set-group-ID program or one with file
capabilities; and there is no equivalent here on other systems (the command is started
plainly and can outlive a killed ``writ run``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

__all__ = ["PDEATHSIG", "popen_tied"]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PDEATHSIG = signal.SIGKILL


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, loaded in the parent: nothing is loaded between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    prctl: Callable[..., int] = fn
    return prctl


_PRCTL = _prctl()


def _tie_to(parent: int, prctl: Callable[..., int]) -> Callable[[], None]:
    """The child's last step before exec: ask for SIGKILL when the parent dies, then make
    sure the parent has not died already (the race the request cannot close alone)."""

    def tie() -> None:
        if prctl(PR_SET_PDEATHSIG, int(PDEATHSIG), 0, 0, 0) != 0:
            os._exit(126)  # refuse to run untied rather than run unsupervised
        if os.getppid() != parent:
            os._exit(126)  # writ run is gone already: never start the command

    return tie


def popen_tied(
    args: Sequence[str], env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """:class:`subprocess.Popen` whose child gets SIGKILL when this process dies (Linux).

    Call it from a thread that lives as long as the child matters (``writ run`` calls it
    from its main thread): the kernel ties the child to the thread that forked it. On other
    systems the child is started plainly."""
    if _PRCTL is None:
        return subprocess.Popen(list(args), env=env)
    return subprocess.Popen(list(args), env=env, preexec_fn=_tie_to(os.getpid(), _PRCTL))
