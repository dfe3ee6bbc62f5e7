"""A held lease's watch on its own rows (``client.lease(..., watch=True)``; ``writ run``
watches always): the moment a row ends the lease — a human's revoke, the server expiring it,
its principal disabled — it is marked lost, as a refused renewal would. Renewing finds out
too, but only at its next turn (every ttl/3: 20 s at a ttl of 60, 20 minutes at 3600), and
meanwhile the holder went on writing under a lease a human had taken away and may have granted
to the next in line.

The watch long-polls ``GET /v1/events`` for the lease's resource (one request waiting on the
server, counted among the principal's waits: ``--max-waits-per-principal``) and asks for the
lease itself when a row of its lock key ends a lease, so the loss is told as the server tells
it, naming who revoked it and by which runbook. Whatever goes wrong with the watch (a server
or proxy that does not let the agent read its resource's rows, one that is restarting, an
answer that is no page) leaves the renewals to find out, as before: it is a shortcut, never the
only way. A poll answered at once with nothing is a second from the one before.

:func:`steps` is the watch without its I/O, driven by a daemon thread for a
:class:`~writ.client.Lease` (:class:`ThreadWatch`, with connections of its own that
:meth:`~ThreadWatch.stop` shuts, so a release never waits out a long poll) and by an asyncio
task for an :class:`~writ.client.AsyncLease` (:class:`TaskWatch`, cancelled).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, NamedTuple

from writ.client import _pages
from writ.client._base import WATCH_WAIT_S, log, refused
from writ.core.errors import LeaseLost, WritError

if TYPE_CHECKING:
    from writ.client._async import AsyncClient
    from writ.client._leases import AsyncLease, Lease, _LeaseState
    from writ.client._sync import Client

__all__ = ["ENDS", "PAUSE_S", "Ask", "TaskWatch", "ThreadWatch", "steps"]

# rows that end a lease other than by its holder's release
ENDS = frozenset({"lease.revoked", "lease.expired"})
PAUSE_S = _pages.QUIET_POLL_S  # after a failed poll, or one answered at once with nothing
JOIN_S = 5.0  # the most a release waits for the watch's thread once its request is cut
LOOK_BACK = 1000  # ledger rows before the watch began searched for the one that ended its lease


class Ask(NamedTuple):
    """One thing the watch asks: the client's ``method(*args)``, or ``pause`` (seconds)."""

    method: str
    args: tuple[Any, ...] = ()


Steps = Generator[Ask, Any, None]


def steps(lease: _LeaseState) -> Steps:
    """The watch of ``lease``: yields what to ask and is sent the answer (or has the failure
    thrown in). Ends once the lease is marked lost here, or once the watch is of no use: a
    4xx (not this agent's to read) ends it quietly; any other failure of a poll is retried a
    second later, and a failure asking for the head or the lease ends it (the renewals tell)."""
    after = yield Ask("last_seq")
    if (yield from _ended(lease, head=after)):  # a revoke between the grant and now
        return
    while True:
        asked = time.monotonic()
        try:
            out = yield Ask("events", (lease.resource, after, WATCH_WAIT_S))
            rows, after = _pages.page(out, after)
        except WritError as exc:
            if refused(exc):  # not this agent's to read: renewals will tell
                log.debug("not watching %s: %s", lease.lease_id, exc.message)
                return
            yield Ask("pause", (PAUSE_S,))
            continue
        for row in rows:
            if row.get("event") in ENDS and row.get("lock_key") == lease.lock_key:
                if (yield from _ended(lease, row)):
                    return
        if not rows:  # a long poll that came back at once with nothing: not in a busy loop
            yield Ask("pause", (max(0.0, PAUSE_S - (time.monotonic() - asked)),))


def _ended(
    lease: _LeaseState, row: dict[str, Any] | None = None, head: int | None = None
) -> Generator[Ask, Any, bool]:
    """Ask the server for the lease; if it no longer holds, mark it lost, saying who ended
    it when ``row`` (the row that did) tells — or, ended before the watch began at ledger row
    ``head``, the row found among the :data:`LOOK_BACK` before it. True if so."""
    data = yield Ask("get_lease", (lease.lease_id,))
    state = data.get("state") if isinstance(data, dict) else None
    if not isinstance(state, str) or state == "held":  # held, or no answer to go by
        return False
    if row is None and head is not None:
        row = yield from _ending_row(lease, max(head - LOOK_BACK, 0))
    how = (row or {}).get("second_key_revoke_provenance")
    by = ""
    if isinstance(how, dict) and how.get("revoked_by"):
        by = (
            f" by {how.get('revoked_by')} (runbook {how.get('via_runbook')}, after paging "
            f"{how.get('after_paging')})"
        )
    lease.mark_lost(
        LeaseLost(
            f"lease {lease.lease_id} on {lease.resource} was {state}{by}; acquire again (a new "
            "fencing token) before writing",
            lease_id=lease.lease_id,
            state=state,
            fencing_token=lease.fencing_token,
        )
    )
    return True


def _ending_row(lease: _LeaseState, after: int) -> Generator[Ask, Any, dict[str, Any] | None]:
    """The row after ``after`` that ended ``lease`` (revoked or expired), or None: one page of
    its resource's rows (the watch begins as the lease is granted, so its rows are recent)."""
    try:
        rows, _ = _pages.page((yield Ask("events", (lease.resource, after, 0))), after)
    except WritError:
        return None
    ours = (r for r in rows if r.get("event") in ENDS and r.get("lock_key") == lease.lock_key)
    return next(ours, None)


class ThreadWatch:
    """The watch of a :class:`~writ.client.Lease`, in a daemon thread. It asks through a
    client of its own (:meth:`Client._own`), whose connections :meth:`stop` shuts: the long
    poll under way ends at once rather than in up to 25 s."""

    def __init__(self, client: Client, lease: Lease) -> None:
        self._client = client._own()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(lease,), name=f"writ-watch-{lease.lease_id}", daemon=True
        )
        self._thread.start()

    def _run(self, lease: Lease) -> None:
        client, stopped = self._client, self._stopped
        watch = steps(lease)
        try:
            ask = next(watch)
            while not (stopped.is_set() or lease.lost.is_set()):
                try:
                    if ask.method == "pause":
                        answer: Any = stopped.wait(*ask.args)
                    else:
                        answer = getattr(client, ask.method)(*ask.args)
                except Exception as exc:
                    ask = watch.throw(exc)
                else:
                    ask = watch.send(answer)
        except StopIteration:
            pass
        except Exception as exc:  # cut by stop(), or worse: the renewals still tell a loss
            if not stopped.is_set():
                log.debug("stopped watching %s: %s", lease.lease_id, exc)
        finally:
            watch.close()
            if client._cancel is not None:  # its own, not the lease's client
                client.close()

    def stop(self) -> None:
        """Ask nothing more and end the request under way; does not wait (see :meth:`join`)."""
        self._stopped.set()
        cancel = self._client._cancel
        if cancel is not None:
            cancel()

    def join(self) -> None:
        """Stop, and wait for the thread (at most :data:`JOIN_S`; not from the thread itself)."""
        self.stop()
        if self._thread is not threading.current_thread():
            self._thread.join(JOIN_S)


class TaskWatch:
    """The watch of an :class:`~writ.client.AsyncLease`, in an asyncio task, cancelled (its
    request with it) by :meth:`stop`."""

    def __init__(self, client: AsyncClient, lease: AsyncLease) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(client, lease), name=f"writ-watch-{lease.lease_id}"
        )

    @staticmethod
    async def _run(client: AsyncClient, lease: AsyncLease) -> None:
        watch = steps(lease)
        try:
            ask = next(watch)
            while not lease.lost.is_set():
                try:
                    if ask.method == "pause":
                        answer: Any = await asyncio.sleep(*ask.args)
                    else:
                        answer = await getattr(client, ask.method)(*ask.args)
                except Exception as exc:  # a cancel is no Exception: it ends the task
                    ask = watch.throw(exc)
                else:
                    ask = watch.send(answer)
        except StopIteration:
            pass
        except Exception as exc:  # the renewals still tell a loss
            log.debug("stopped watching %s: %s", lease.lease_id, exc)
        finally:
            watch.close()

    def stop(self) -> None:
        """Cancel the task (unless it is the one calling); does not wait (see :meth:`join`)."""
        if self._task is not asyncio.current_task():
            self._task.cancel()

    async def join(self) -> None:
        """Cancel the task and wait for it to end."""
        self.stop()
        if self._task is not asyncio.current_task():
            await asyncio.wait([self._task])
