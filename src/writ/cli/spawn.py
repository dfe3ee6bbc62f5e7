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
capabilities; and there is no equivalent here on other systems (the command can outlive a
killed ``writ run``).

:class:`Job` puts the command in a process group of its own, so that what it starts (a
shell script's children, a tool's workers) is signalled with it: when the lease is lost,
``writ run`` stops the whole group, SIGTERM then SIGKILL, not the command alone (a
grandchild that ignored SIGTERM went on writing with no lease). At a terminal the group is
made the terminal's foreground, so the command reads the keyboard and gets Ctrl-C and
Ctrl-Z as before; a Ctrl-Z stops ``writ run`` too, as a shell expects of its job.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

__all__ = ["PDEATHSIG", "Job"]

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


def _own_group(tty: int | None, then: Callable[[], None] | None) -> Callable[[], None]:
    """The child's steps before exec: a process group of its own (its pid), made the
    foreground of ``tty`` when writ run held it; then ``then`` (the parent-death tie)."""

    def setup() -> None:
        os.setpgid(0, 0)
        if tty is not None:  # a background group may set the foreground with SIGTTOU blocked
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
            os.tcsetpgrp(tty, os.getpid())
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTTOU})
        if then is not None:
            then()

    return setup


def _foreground_tty() -> int | None:
    """Standard input's descriptor when it is a terminal whose foreground is this process's
    group (writ run started from a shell prompt), else None."""
    try:
        fd = sys.stdin.fileno()
        return fd if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp() else None
    except (AttributeError, OSError, ValueError):
        return None


class Job:
    """The command, started in a process group of its own (its pid), with the parent-death
    signal on Linux. Create it from a thread that lives as long as the command matters
    (``writ run``'s main thread): the kernel ties the child to the thread that forked it. :meth:`signal` reaches the whole group; :meth:`stop`
    ends it, SIGTERM then SIGKILL. Call :meth:`reap` from a thread of its own: it waits
    for the command (only it, never :class:`subprocess.Popen`'s wait or poll)."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.tty = _foreground_tty()
        tie = _tie_to(os.getpid(), _PRCTL) if _PRCTL is not None else None
        self.proc = subprocess.Popen(list(args), env=env, preexec_fn=_own_group(self.tty, tie))
        self.pid = self.proc.pid
        self.exited = threading.Event()
        self.stopped = threading.Event()  # at a terminal, by Ctrl-Z: see suspend
        self._resumed = threading.Event()
        self._ending = False  # stop() was called: a stopped command is not waited for
        self.returncode: int | None = None

    def reap(self, then: Callable[[], None]) -> None:
        """Wait for the command to exit, then call ``then``. Stopped at a terminal (Ctrl-Z
        reaches its group, the foreground), it sets :attr:`stopped` and calls ``then``: the
        main thread calls :meth:`suspend`, and the command goes on when writ run does."""
        flags = os.WUNTRACED if self.tty is not None else 0
        while True:
            _, status = os.waitpid(self.pid, flags)
            if not os.WIFSTOPPED(status):
                break
            self.stopped.set()
            then()
            self._resumed.wait()
            if not self._ending:
                self._resumed.clear()
        self.returncode = self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.exited.set()
        then()

    def suspend(self) -> None:
        """The command was stopped at the terminal: stop writ run too (the shell sees its
        job stopped), and once continued, continue the command, in the foreground again if
        writ run was continued there (fg). From the main thread: a stop sent by another
        thread did not always hold."""
        self.give_terminal_back()
        os.kill(os.getpid(), signal.SIGSTOP)
        if self.tty is not None:
            with contextlib.suppress(OSError):
                if os.tcgetpgrp(self.tty) == os.getpgrp():
                    os.tcsetpgrp(self.tty, self.pid)
        self.signal(signal.SIGCONT)
        self.stopped.clear()
        self._resumed.set()

    def give_terminal_back(self) -> None:
        """The terminal's foreground to writ run's group again, if the command's group has
        it (SIGTTOU is ignored meanwhile: see writ run's signals)."""
        if self.tty is not None:
            with contextlib.suppress(OSError):
                if os.tcgetpgrp(self.tty) == self.pid:
                    os.tcsetpgrp(self.tty, os.getpgrp())

    def signal(self, signum: int) -> None:
        """``signum`` to every process of the command's group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def running(self) -> bool:
        """Whether any process of the command's group is left (the command or what it
        started and left behind)."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, grace: float) -> bool:
        """SIGTERM to the group; SIGKILL to what is left after ``grace`` seconds. Whether
        SIGKILL was needed. Returns once the command itself has exited."""
        deadline = time.monotonic() + grace
        self._ending = True
        self._resumed.set()
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        self.exited.wait(grace)
        while self.running() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.05, left))  # what it started: no event tells when they end
        if not self.running():
            return False
        self.signal(signal.SIGKILL)
        self.exited.wait()
        return True
