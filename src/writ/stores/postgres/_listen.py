"""LISTEN/NOTIFY of the PostgreSQL store: packing notes into NOTIFY payloads, the one listening
connection per store, and the resync after it comes back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from writ.stores.base import shrink_note
from writ.stores.postgres._schema import (
    _NOTIFY_LIMIT,
)
from writ.stores.postgres._sql import log

if TYPE_CHECKING:
    from writ.stores.postgres._batch import _Live


def _payloads(instance: str, notes: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """Notes packed into as few NOTIFY payloads as fit, each tagged with our instance id
    (so this process can ignore its own echo: it delivers its notes itself, at once)."""
    out: list[str] = []
    batch: list[Any] = []
    for kind, payload in notes:
        item = [kind, payload]
        if len(json.dumps(item)) > _NOTIFY_LIMIT - 100:
            item = [kind, shrink_note(payload)]
        trial = json.dumps({"i": instance, "n": [*batch, item]})
        if len(trial.encode()) > _NOTIFY_LIMIT and batch:
            out.append(json.dumps({"i": instance, "n": batch}))
            batch = []
        batch.append(item)
    if batch:
        out.append(json.dumps({"i": instance, "n": batch}))
    return out


# Every process that opens the store says "hello" on its channel when its LISTEN connection
# comes up and every HELLO_EVERY seconds after. A server sends its batches' notes by NOTIFY
# only while another process may hear them: it heard a foreign notification (a hello
# included) within HEARD_FOR seconds, or its last catch-up found another server's writes.
# A NOTIFY costs a lone server ~0.7 ms of every commit's latency (measured in
# docs/scaling.md) and tells nobody anything: its own notes are delivered at commit.
# Servers relaying to this one (store.note_peers) are given its notes over the relay
# instead: hearing from them alone does not make a batch NOTIFY (docs/scaling.md).
# A process heard for the first time is answered with a hello at once (at most one answer
# every GREET_EVERY seconds): it may have said its own before this one listened, and the two
# would not know of each other until the next round.
HELLO_EVERY = 5.0
HEARD_FOR = 2.5 * HELLO_EVERY
GREET_EVERY = 1.0
MAX_HEARD = 256  # processes told apart by their hellos; beyond that, any other one counts


class _Listener:
    """The notification half of :class:`~writ.stores.postgres.PostgresStore` (a mixin: the
    attributes below are the store's, set in its ``__init__``)."""

    # time.monotonic() when another process was last heard from: by its instance id, and
    # for any of them when more than MAX_HEARD spoke (an id is what its sender says it is)
    _others_at = float("-inf")
    _heard_at: dict[str, float]
    _pruned_at = float("-inf")  # when _heard_at was last pruned (at most once a second)
    _greet = False  # a process not heard before spoke: say hello (it may have missed ours)
    differs: str | None = None  # why this process must not serve: another blast radius runs
    _opened_listening = False  # open() has waited for the LISTEN connection
    fingerprint: str | None
    # the last ledger row the writer's notes over the relay told of (0: none since the last
    # look-up), what notes_lost looks up from: this server's own NOTIFY echo, when it wrote
    # itself meanwhile, may be ahead of the writer's notes still in the air
    _relay_seq = 0
    _replays: set[asyncio.Task[None]]

    _closed: bool
    _conninfo: str
    _kwargs: dict[str, Any]
    _listening: asyncio.Event
    _heard_seq: int
    _pool: AsyncConnectionPool[Any] | None
    note_peers: set[str]
    _old_pools: set[asyncio.Task[None]]
    channel: str
    instance: str
    statement_timeout: float

    _live: _Live | None

    if TYPE_CHECKING:

        def _new_pool(self) -> AsyncConnectionPool[Any]: ...

        def _deliver(self, notes: Sequence[tuple[str, dict[str, Any]]]) -> None: ...

        def _deliver_foreign(self, notes: Sequence[tuple[str, dict[str, Any]]]) -> None: ...

    # -- notifications -------------------------------------------------------------------
    async def _listen(self) -> None:
        """One LISTEN connection per store. Reconnects by itself; after a reconnect it
        delivers what may have been missed meanwhile (see :meth:`_resync`)."""
        delay, lost_at = 0.05, None  # type: float, float | None
        while not self._closed:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, **self._kwargs)
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                self._differs(await self._hold_fingerprint(conn, take=True))
                if lost_at is not None:
                    await self._resync(conn, time.monotonic() - lost_at)
                    lost_at = None
                elif not self._listening.is_set():  # first start: hear from the head on
                    cur = await conn.execute("SELECT seq FROM audit_head")
                    row = await cur.fetchone()
                    self._heard_seq = max(self._heard_seq, int(row[0]) if row else 0)
                self._listening.set()
                delay = 0.05
                hello = json.dumps({"i": self.instance, "n": [["hello", {}]]})
                greeted_at = float("-inf")
                while not self._closed:
                    # also the liveness check of a quiet connection
                    await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, hello))
                    if self.differs is not None:  # another radius: is it gone yet?
                        self._differs(await self._hold_fingerprint(conn))
                    self._greet = False
                    until = time.monotonic() + HELLO_EVERY
                    while (now := time.monotonic()) < until:
                        if self._greet and now - greeted_at >= GREET_EVERY:
                            greeted_at = now
                            break  # answered now
                        # a batch read at once, whole: a break out of notifies() drops the
                        # rest of the one it is in; an answer held back is due GREET_EVERY on
                        wait = min(until, greeted_at + GREET_EVERY) if self._greet else until
                        async for n in conn.notifies(timeout=wait - now, stop_after=1):
                            self._on_notify(n.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the listener must outlive an outage
                if self._closed:
                    break
                if lost_at is None:
                    lost_at = time.monotonic()
                    self._listening.clear()
                    log.warning("PostgreSQL LISTEN connection lost (%s); reconnecting", exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 1.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    def _differs(self, differs: str | None) -> None:
        if differs != self.differs and self._opened_listening:  # (at start: open() says it)
            if differs is None:
                log.warning("no other blast radius runs on this store: writes again")
            else:
                log.error("%s: this server writes nothing meanwhile", differs)
        self.differs = differs

    async def _hold_fingerprint(
        self, conn: psycopg.AsyncConnection[Any], take: bool = False
    ) -> str | None:
        """Hold (``take``: on a new connection), for the connection's life, a shared advisory
        lock naming the blast radius this process runs (:attr:`fingerprint`); why not to go
        on when another process on the store holds one naming another. A grant on one server
        would not exclude what the other's groups make conflict: two holders on one blast
        radius. While one does, it is asked again every HELLO_EVERY."""
        if self.fingerprint is None:
            return None
        space = zlib.crc32(f"writ-blast-radius:{self.channel}".encode()) & 0x7FFFFFFF
        mine = int(self.fingerprint[:8], 16) & 0x7FFFFFFF
        if take:
            await conn.execute("SELECT pg_advisory_lock_shared(%s, %s)", (space, mine))
        cur = await conn.execute(
            "SELECT count(DISTINCT objid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND objsubid = 2 AND classid::int8 = %s AND objid::int8 <> %s"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (space, mine),
        )
        row = await cur.fetchone()
        if not row or not row[0]:
            return None
        return (
            f"another writ server on this store runs another blast radius ({row[0]} other): "
            "a grant on one would not exclude what the other's [blast_radius] groups make "
            "conflict; stop every server on the store, then start them all with one policy"
        )

    def _on_notify(self, text: str) -> None:
        """A notification on the store's channel. Anyone who may connect to the database may
        NOTIFY on it (PostgreSQL checks no privilege), so what arrives is parsed defensively
        and what another process says is delivered marked ``unverified``: a hint to look in
        the database, never a fact (the engine reads a granted lease back, see
        ``Engine._collect``)."""
        try:
            msg = json.loads(text)
            sender = str(msg["i"])
            notes = [(str(k), dict(p)) for k, p in msg["n"]]
        except (ValueError, KeyError, TypeError, RecursionError):
            log.warning("ignoring a malformed writ notification: %.200s", text)
            return
        self._heard_up_to(notes)
        if sender == self.instance:  # our own notes were delivered at commit
            return
        if any(kind == "principals" for kind, _payload in notes):
            self._forget_principals()
        if sender != "db":  # a trigger's (a principal changed), not a process's
            self._heard_from(sender)
        self._deliver_foreign(notes)

    def _forget_principals(self) -> None:
        """A principal changed elsewhere — on another server, or by hand (the table's
        trigger announces both) — or such news may have been missed: the replica reads
        each principal afresh, so a grant or a hand-off decided here sees one disabled or
        deleted since (writ's own changes already made it forget, see ``PgTx._w``)."""
        if self._live is not None:
            self._live.forget()

    def _heard_up_to(self, notes: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """The last ledger row ``notes`` tell of (0: none), now counted as heard. Notes
        arrive in commit order (NOTIFY's, our own echo included, and the relay's): having
        heard row n, this listener has heard every row up to n (what a resync starts from;
        a wrong number there costs a resync's replay, which the waiters' own re-checks back
        up)."""
        top = 0
        for kind, payload in notes:
            seq = payload.get("seq")
            if kind == "audit" and type(seq) is int and seq > top:
                top = seq
        self._heard_seq = max(self._heard_seq, top)
        return top

    def _heard_from(self, sender: str) -> None:
        now = time.monotonic()
        heard = self._heard_at
        if sender not in heard and len(heard) >= MAX_HEARD:
            if now - self._pruned_at >= 1.0:  # a flood of invented ids costs one scan a second
                self._pruned_at = now
                for old in [k for k, at in heard.items() if now - at >= HEARD_FOR]:
                    del heard[old]
            if len(heard) >= MAX_HEARD:  # a crowd, or someone inventing ids: count them all
                self._others_at = now
                return
        self._greet = self._greet or sender not in heard
        heard[sender] = now

    def _heard_others(self) -> bool:
        """Another process that shares the store may be listening (see HELLO_EVERY): one
        was heard from lately that is not given our notes over the relay (``note_peers``),
        or this one cannot hear (its LISTEN connection is down)."""
        now = time.monotonic()
        if not self._listening.is_set() or now - self._others_at < HEARD_FOR:
            return True
        peers = self.note_peers
        return any(now - at < HEARD_FOR and i not in peers for i, at in self._heard_at.items())

    def take_notes(self, notes: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """The writer's notes, over the relay (writ.api.relay): as if heard by NOTIFY."""
        self._relay_seq = max(self._relay_seq, self._heard_up_to(notes))
        self._deliver_foreign(notes)

    def notes_lost(self) -> None:
        """The relay that brought the writer's notes broke: deliver what may have been
        missed (the grants to queued requests since the last row heard of, and a
        ``resync``), as after the LISTEN connection came back. The writer notifies again
        from its next batch on (this server is no longer one of its ``note_peers``)."""
        if self._closed or self._pool is None:
            return
        since = min(self._heard_seq, self._relay_seq or self._heard_seq)
        self._relay_seq = 0
        task = asyncio.get_running_loop().create_task(self._replay_missed(since))
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)

    async def _resync(self, conn: psycopg.AsyncConnection[Any], outage_s: float) -> None:
        """After the LISTEN connection came back: notifications sent meanwhile are lost, so
        re-announce what may have been missed (:meth:`_missed`). A fresh pool replaces the
        old one, whose reconnect attempts may be backing off for many seconds."""
        notes = await self._missed(conn, outage_s)
        self._forget_principals()  # a principal's change may have been missed too
        await self._refresh_pool()
        log.warning(
            "PostgreSQL reachable again after %.1fs; resynchronized at seq %d",
            outage_s,
            self._heard_seq,
        )
        self._deliver(notes)

    async def _replay_missed(self, since: int) -> None:
        """What :meth:`notes_lost` runs: :meth:`_missed` since row ``since``, on a pooled
        connection — twice: at once, and once more after a statement's time, for the commit
        the writer decided to tell over the relay just before the link broke and that was
        not yet visible at the first look (store.close cancels the wait)."""
        for attempt in (1, 2):
            if attempt == 2:
                await asyncio.sleep(self.statement_timeout)
            try:
                pool = self._pool
                assert pool is not None
                async with pool.connection(timeout=self.statement_timeout) as conn:
                    notes = await self._missed(conn, 0.0, since)
            except Exception as exc:  # the database is out of reach: LISTEN's resync follows
                log.warning("could not read what the relay's notes may have missed (%s)", exc)
                return
            if attempt == 1:
                log.info(
                    "the writer's notes over the relay ended; resynchronized at seq %d",
                    self._heard_seq,
                )
            self._deliver(notes)

    async def _missed(
        self, conn: psycopg.AsyncConnection[Any], outage_s: float, since: int | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """The notes that say what may have been missed since the last row heard of (or
        ``since``): the grants made to queued requests meanwhile, the current head, and a
        ``resync``."""
        cur = await conn.execute(
            "SELECT request_id, lease_id FROM leases WHERE request_id IS NOT NULL AND"
            " acquired_at >= coalesce((SELECT ts FROM audit WHERE seq = %s), 0)"
            " ORDER BY fencing_token LIMIT 10000",
            (self._heard_seq if since is None else since,),
        )
        grants = await cur.fetchall()
        cur = await conn.execute("SELECT seq FROM audit_head")
        row = await cur.fetchone()
        head = int(row[0]) if row else 0
        self._heard_seq = max(self._heard_seq, head)
        notes: list[tuple[str, dict[str, Any]]] = [
            ("granted", {"waiter_id": r, "lease_id": l}) for r, l in grants
        ]
        notes += [
            ("audit", {"seq": head}),
            ("resync", {"seq": head, "outage_s": round(outage_s, 3)}),
        ]
        return notes

    async def _refresh_pool(self) -> None:
        old, new = self._pool, self._new_pool()
        await new.open(wait=False)
        self._pool = new
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.close(timeout=self.statement_timeout))
            self._old_pools.add(task)
            task.add_done_callback(self._old_pools.discard)
