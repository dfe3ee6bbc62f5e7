"""Held leases: acquire on enter, renew in the background, release on exit (:class:`Lease` for
:class:`~writ.client.Client`, :class:`AsyncLease` for :class:`~writ.client.AsyncClient`)."""

from __future__ import annotations

import asyncio
import contextlib
import reprlib
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from writ.client._base import OnLost, log, refused
from writ.client._routes import JSON, _names, _renew_req
from writ.client._watch import TaskWatch, ThreadWatch
from writ.core.errors import (
    LeaseLost,
    Unavailable,
    WritError,
)
from writ.core.textsafe import printable
from writ.core.validate import text_problem

if TYPE_CHECKING:
    from writ.client._async import AsyncClient
    from writ.client._sync import Client


MAX_TTL_S = 3600  # PROTOCOL.md: a lease's ttl_s is 1 to 3600


def _text(value: Any) -> bool:
    """A non-empty string with no control character (a NUL cannot go into an environment)."""
    return isinstance(value, str) and bool(value) and not text_problem(value)


def _checked_lease(data: JSON) -> float:
    """The ttl of a Lease answered by a grant or a renewal, once its fields are what writ
    sends (PROTOCOL.md): a ``lease_id`` and a ``lock_key`` that are text, an integer ``fencing_token``, a ``ttl_s`` of 1 to
    3600. Anything else is :class:`~writ.Unavailable`: a renewal that took a ``nan`` ttl
    renewed in a busy loop, and one that took a string stopped the renewals for good without
    ever calling the lease lost."""
    lease_id, token, ttl = data.get("lease_id"), data.get("fencing_token"), data.get("ttl_s")
    key = data.get("lock_key")
    if not _text(lease_id) or not _text(key):
        problem = "no lease_id or lock_key, or one that is not text (writ run puts them in an environment)"
    elif not isinstance(token, int) or isinstance(token, bool) or token < 0:
        problem = "a fencing_token that is not a whole number"
    elif not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL_S:
        problem = "a ttl_s that is not a number of seconds from 1 to 3600"
    else:
        return float(ttl)
    shown = printable(reprlib.repr(data))
    raise Unavailable(f"the server answered with a lease that has {problem}: {shown}")


def _failure(exc: Exception) -> WritError:
    """A renewal's failure as a :class:`WritError`: one that is not (a bug, or something of
    an answer nobody foresaw) is :class:`~writ.Unavailable`, retried until the lease's expiry
    like a server that is down. Anything that ended the renewals instead left the lease held
    on the client's side, never called lost, while the server let it expire (as the
    TypeScript client's renewals already did)."""
    if isinstance(exc, WritError):
        return exc
    log.warning("renewal failed unexpectedly", exc_info=exc)
    return Unavailable(f"the renewal failed: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------- held leases
class _LeaseState:
    """What both lease handles know: the request, the granted Lease, the renewal clock."""

    def __init__(
        self,
        resource: str,
        intent: str,
        ttl_s: float,
        wait_s: float,
        touches: list[str] | None,
        rollback: Mapping[str, Any] | None,
        consent_id: str | None,
        renew_every: float | None,
        on_lost: OnLost | None,
        watch: bool = False,
    ) -> None:
        self.resource = resource
        self.intent = intent
        self.ttl_s = float(ttl_s)
        self.wait_s = float(wait_s)
        self.touches = _names(touches, "touches")  # a lone string: Invalid, at once
        self.rollback = rollback
        self.consent_id = consent_id
        self.renew_every = renew_every
        self.on_lost = on_lost
        self.watch = watch  # watch the lease's rows for a revoke or expiry (writ.client._watch)
        self._watch: ThreadWatch | TaskWatch | None = None
        self.data: JSON | None = None  # the latest Lease the server returned
        self.error: LeaseLost | None = None  # why the lease was lost
        self._deadline = 0.0  # local monotonic time by which the server will expire it
        # counted lost this long before that, renewals failing (writ run: its --grace, so
        # that what it stops is stopped before the server lets another take the resource)
        self.margin_s = 0.0

    def __repr__(self) -> str:
        """``<Lease prod/db held by perf-agent: ls_…, fencing token 8841, expires …>``."""
        name = type(self).__name__
        if self.data is None:
            return f"<{name} {self.resource} {self.intent!r}: not acquired>"
        state = "lost" if self.error is not None else self.data.get("state", "held")
        return (
            f"<{name} {self.data.get('resource')} {state} by {self.data.get('holder')}: "
            f"{self.data.get('lease_id')}, fencing token {self.data.get('fencing_token')}, "
            f"expires {self.data.get('expires_at')}>"
        )

    # ---- the Lease fields -------------------------------------------------------------
    def _field(self, name: str) -> Any:
        if self.data is None:
            raise RuntimeError("the lease is not acquired yet: enter the `with` block first")
        return self.data[name]

    @property
    def lease_id(self) -> str:
        return str(self._field("lease_id"))

    @property
    def fencing_token(self) -> int:
        return int(self._field("fencing_token"))

    @property
    def lock_key(self) -> str:
        return str(self._field("lock_key"))

    @property
    def expires_at(self) -> str:
        """RFC 3339 expiry from the last grant or renewal (the store's clock)."""
        return str(self._field("expires_at"))

    def env(self) -> dict[str, str]:
        """``WRIT_LOCK_KEY``, ``WRIT_FENCING_TOKEN``, ``WRIT_LEASE_ID`` for a child process."""
        return {
            "WRIT_LOCK_KEY": self.lock_key,
            "WRIT_FENCING_TOKEN": str(self.fencing_token),
            "WRIT_LEASE_ID": self.lease_id,
        }

    def headers(self) -> dict[str, str]:
        """``Writ-Lease`` and ``Writ-Fencing-Token`` for a request through ``writ gate``.

        Raises :class:`~writ.LeaseLost` if the lease is already known to be lost.
        """
        self.check()
        return {"Writ-Lease": self.lease_id, "Writ-Fencing-Token": str(self.fencing_token)}

    def check(self) -> None:
        """Raise :class:`~writ.LeaseLost` if the lease was lost (expired, revoked), or is
        past the time by which it must have been renewed and was not (a paused process, a
        long stretch of work that kept the renewals from running): its clock, not only what
        the renewals said."""
        if self.error is None and 0 < self._lost_at <= time.monotonic():
            self._lose(self._expired_error(None))
        if self.error is not None:
            raise self.error

    lost: threading.Event | asyncio.Event

    def mark_lost(self, err: LeaseLost) -> None:
        """Record a loss learned some other way than by renewing (the watch saw the lease's
        revoke or expiry): as a refused renewal would, once."""
        self._lose(err)

    def _lose(self, err: LeaseLost) -> None:
        """Record the loss once: ``error``, the ``lost`` event, the ``on_lost`` callback;
        the watch, if any, stops."""
        if self.error is not None:
            return
        self.error = err
        self.lost.set()
        watch = self._watch  # close() may be taking it away in another thread
        if watch is not None:
            watch.stop()
        log.warning("%s", err.message)
        if self.on_lost is not None:
            try:
                self.on_lost(err)
            except Exception:
                log.exception("on_lost callback failed")

    # ---- renewal arithmetic -------------------------------------------------------------
    @property
    def _every(self) -> float:
        every = self.renew_every if self.renew_every is not None else self.ttl_s / 3
        return max(every, 0.01)

    @property
    def _lost_at(self) -> float:
        return self._deadline - self.margin_s

    def _granted(self, data: JSON, sent: float) -> None:
        """Record a grant or renewal whose request left at monotonic ``sent``."""
        self.ttl_s = _checked_lease(data)
        self.data = data
        self._deadline = sent + self.ttl_s

    def _acquired(self, data: JSON, sent: float) -> bool:
        """Record the grant of an acquire sent at monotonic ``sent``: the server's ttl ran
        from some moment after that, so counting from it is never late. True when the
        answer took longer than a renewal's period (a wait in the queue; a pause): then
        renew at once, so the clock is set from a request that did not wait."""
        self._granted(data, sent)
        return time.monotonic() - sent > self._every

    def _renew_failed(self, exc: WritError) -> float | None:
        """After a failed renewal: when to retry, or None once the lease is lost."""
        if self._fatal(exc):
            self._lose(self._lost_error(exc))
            return None
        if time.monotonic() >= self._lost_at:
            self._lose(self._expired_error(exc))
            return None
        log.info("renewing %s failed, retrying: %s", self.lease_id, exc.message)
        return time.monotonic() + self._retry_pause()

    def _unreleased(self, exc: WritError) -> None:
        log.warning(
            "could not release %s (it expires by itself within %gs): %s",
            self.lease_id,
            self.ttl_s,
            exc.message,
        )

    def _retry_pause(self) -> float:
        return min(max(self.ttl_s / 10, 0.05), 1.0)

    def _renew_timeout(self, client_timeout: float) -> float:
        """A renewal must answer before the lease would expire, or it is no use."""
        left = self._deadline - time.monotonic()
        return max(0.25, min(client_timeout, left if left > 0 else client_timeout))

    def _lost_error(self, exc: WritError) -> LeaseLost:
        if isinstance(exc, LeaseLost):
            return exc
        return LeaseLost(
            f"lease {self.data and self.data.get('lease_id')} on {self.resource} was lost: "
            f"{exc.message}",
            lease_id=self.data.get("lease_id") if self.data else None,
            cause=exc.code,
        )

    def _expired_error(self, exc: WritError | None) -> LeaseLost:
        why = exc.message if exc is not None else "no renewal ran in time"
        return LeaseLost(
            f"lease {self.lease_id} on {self.resource} could not be renewed before it expired "
            f"(ttl {self.ttl_s:g}s): {why}; treat it as lost",
            lease_id=self.lease_id,
            state="unknown",
            fencing_token=self.fencing_token,
        )

    @staticmethod
    def _fatal(exc: WritError) -> bool:
        """A renewal refused (410 lost, 403, 404, ...) rather than failed in transit, a 5xx,
        or refused for now (408, 429: :func:`writ.client._base.refused`)."""
        return refused(exc)


class Lease(_LeaseState):
    """A lease held by :meth:`Client.lease`: acquire on enter, renew, release on exit.

    ``lost`` is a :class:`threading.Event` set when the lease is lost; ``check()`` then
    raises :class:`~writ.LeaseLost`, and leaving the ``with`` block raises it too. Use
    :meth:`acquire` and :meth:`close` to hold a lease outside a ``with`` block.
    """

    def __init__(self, client: Client, *args: Any) -> None:
        super().__init__(*args)
        self.client = client
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> Lease:
        """Acquire (waiting up to ``wait_s``) and start renewing in a daemon thread."""
        sent = time.monotonic()
        data = self.client.acquire(
            self.resource,
            self.intent,
            self.ttl_s,
            self.wait_s,
            self.touches,
            self.consent_id,
            self.rollback,
        )
        if self._acquired(data, sent):
            with contextlib.suppress(Unavailable):  # (a refusal: lost, raised)
                self.renew()
        self._thread = threading.Thread(
            target=self._renew_loop, name=f"writ-renew-{self.lease_id}", daemon=True
        )
        self._thread.start()
        if self.watch:
            self._watch = ThreadWatch(self.client, self)
        return self

    def renew(self) -> JSON:
        """Renew now (the background thread does this on its own). A refusal
        (:class:`~writ.LeaseLost`) loses the lease, as the thread's would."""
        sent = time.monotonic()
        try:
            data: JSON = self.client._send(
                _renew_req(self.lease_id, timeout=self._renew_timeout(self.client.timeout))
            )
        except LeaseLost as exc:
            self._lose(exc)
            raise
        self._granted(data, sent)
        return data

    def _renew_loop(self) -> None:
        due = time.monotonic() + self._every
        while not self._stop.wait(max(0.0, min(due, self._lost_at) - time.monotonic())):
            try:
                self.renew()
                due = time.monotonic() + self._every
            except Exception as exc:  # any failure is a failed renewal (see _failure)
                retry = self._renew_failed(_failure(exc))
                if retry is None:
                    return
                due = retry

    def _stop_renewing(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def close(self) -> None:
        """Stop renewing and watching, and release. Raises :class:`~writ.LeaseLost` if it
        was lost."""
        self._stop_renewing()
        watch, self._watch = self._watch, None
        if isinstance(watch, ThreadWatch):
            watch.stop()  # its long poll cut, not waited out
        try:
            self.check()
            self.data = self.client.release(self.lease_id)
        except LeaseLost as exc:
            self._lose(exc)
            raise
        except WritError as exc:  # unreachable, or refused for now (429, 408, a 5xx)
            self._unreleased(exc)
        finally:
            if isinstance(watch, ThreadWatch):  # a poll through a transport passed, which
                watch.join()  # nothing cuts, is answered by the release's row

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        with contextlib.suppress(WritError):  # the body's exception is the one to see
            self.close()


class AsyncLease(_LeaseState):
    """A lease held by :meth:`AsyncClient.lease` (``async with``), renewed by a task.

    ``lost`` is an :class:`asyncio.Event`; otherwise the same as :class:`Lease`.
    """

    def __init__(self, client: AsyncClient, *args: Any) -> None:
        super().__init__(*args)
        self.client = client
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def acquire(self) -> AsyncLease:
        sent = time.monotonic()
        data = await self.client.acquire(
            self.resource,
            self.intent,
            self.ttl_s,
            self.wait_s,
            self.touches,
            self.consent_id,
            self.rollback,
        )
        if self._acquired(data, sent):
            with contextlib.suppress(Unavailable):  # (a refusal: lost, raised)
                await self.renew()
        self._task = asyncio.get_running_loop().create_task(
            self._renew_loop(), name=f"writ-renew-{self.lease_id}"
        )
        if self.watch:
            self._watch = TaskWatch(self.client, self)
        return self

    async def renew(self) -> JSON:
        """Renew now (the background task does this on its own). A refusal
        (:class:`~writ.LeaseLost`) loses the lease, as the task's would."""
        sent = time.monotonic()
        try:
            data: JSON = await self.client._send(
                _renew_req(self.lease_id, timeout=self._renew_timeout(self.client.timeout))
            )
        except LeaseLost as exc:
            self._lose(exc)
            raise
        self._granted(data, sent)
        return data

    async def _renew_loop(self) -> None:
        due = time.monotonic() + self._every
        while True:
            await asyncio.sleep(max(0.0, min(due, self._lost_at) - time.monotonic()))
            try:
                await self.renew()
                due = time.monotonic() + self._every
            except Exception as exc:  # any failure is a failed renewal (see _failure)
                retry = self._renew_failed(_failure(exc))
                if retry is None:
                    return
                due = retry

    async def _stop_renewing(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Stop renewing and watching, and release. Raises :class:`~writ.LeaseLost` if it
        was lost."""
        await self._stop_renewing()
        watch, self._watch = self._watch, None
        if isinstance(watch, TaskWatch):
            await watch.join()
        self.check()
        try:
            self.data = await self.client.release(self.lease_id)
        except LeaseLost as exc:
            self._lose(exc)
            raise
        except WritError as exc:  # unreachable, or refused for now (429, 408, a 5xx)
            self._unreleased(exc)

    async def __aenter__(self) -> AsyncLease:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
            return
        with contextlib.suppress(WritError):
            await self.close()
