"""The sweep's write, kept going past a lease or lock delay whose end fails.

The sweep (:meth:`writ.engine.kernel.Engine.sweep`) ends what is due in one transaction:
every lease past its ttl expired, every lock delay past its end ended. Should ending one
of them raise (a rule's hook, a row writ cannot read, a setting out of range), that
transaction ends nothing, and the sweep used to stop there: no lease of the store expired
any more, and the periodic duties after it (consent timeouts, stuck leases, checkpoints)
never ran. :func:`end_due` then ends each in a transaction of its own, and logs the one
that fails with its cause: the others end, the duties run, and the failing one is tried
again a sweep interval later (not at once, over and over).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from writ.core.errors import Unavailable
from writ.core.models import Lease
from writ.stores.base import Tx

if TYPE_CHECKING:
    from writ.engine.kernel import Engine

log = logging.getLogger("writ.engine")

PAGE = 500  # what one sweep ends at most, of leases and of lock delays (as the sweep's own)


def _cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def end_due(engine: Engine, sweep: Callable[[Tx], Awaitable[int]]) -> int:
    """Run ``sweep`` (the sweep's own transaction); should it fail, end each lease and lock
    delay that is due on its own. Returns the leases expired; raises only when the store is
    out of reach (:class:`~writ.core.errors.Unavailable`), as the sweep did."""
    try:
        return await engine.store.transact(sweep)
    except Unavailable:
        raise
    except Exception as exc:
        log.warning("sweep: ending what is due failed (%s); ending each on its own", _cause(exc))
    # what failed is due still: the sweeper's next look is an interval away, not at once
    engine._swept = (False, asyncio.get_running_loop().time() + engine.sweep_interval)
    try:
        leases, delays = await engine.store.read(_due)
    except Unavailable:
        raise
    except Exception as exc:
        log.error("sweep: what is due could not be read: %s", _cause(exc))
        return 0
    ended = 0
    for lease in leases:
        what = f"lease {lease.lease_id} on {lease.resource}"
        ended += await _alone(engine, what, partial(_expire, engine, lease.lease_id))
    for d in delays:
        what = f"the lock delay of lease {d.get('lease_id')} on {d.get('resource')}"
        await _alone(engine, what, partial(_end_delay, engine, d.get("lease_id")))
    return ended


async def _due(tx: Tx) -> tuple[list[Lease], list[dict[str, Any]]]:
    now = tx.now()
    return await tx.due_leases(now, PAGE), await tx.objects_due("delay", "active", now, PAGE)


async def _alone(engine: Engine, what: str, fn: Callable[[Tx], Awaitable[int]]) -> int:
    try:
        return await engine.store.transact(fn)
    except Unavailable:
        raise
    except Exception as exc:
        log.error("sweep: %s could not be ended (tried again next sweep): %s", what, _cause(exc))
        return 0


async def _expire(engine: Engine, lease_id: str, tx: Tx) -> int:
    lease = await tx.get_lease(lease_id, for_update=True)  # as the sweep: looked at again
    if lease is None or lease.state != "held" or lease.expires_at > tx.now():
        return 0
    await engine._expire(tx, lease)
    return 1


async def _end_delay(engine: Engine, lease_id: Any, tx: Tx) -> int:
    delay = await tx.get_object("delay", str(lease_id), for_update=True)
    if delay is None or delay["state"] != "active" or delay["expires_at_ts"] > tx.now():
        return 0
    await engine._end_delay(tx, delay)
    return 0


async def ticked(tick: Callable[[], Awaitable[Any]]) -> None:
    """Run one periodic duty of the sweep (a rule's tick, a ticker such as the checkpoints);
    one that raises is logged with its cause, and the duties after it run all the same.
    Only the store out of reach (:class:`~writ.core.errors.Unavailable`) goes up: the
    sweeper says so and tries again."""
    try:
        await tick()
    except Unavailable:
        raise
    except Exception as exc:
        log.error("sweep: a periodic duty failed (%s); the others run", _cause(exc))
