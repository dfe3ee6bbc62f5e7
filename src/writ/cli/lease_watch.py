"""``writ run``'s watch on its own lease: the moment a row ends it — a human's revoke, the
server expiring it, its principal disabled — the lease is marked lost and COMMAND stopped.
Renewing finds out too, but only at its next turn (every ttl/3: ten seconds at the default
ttl, minutes at a long one), and meanwhile COMMAND went on writing under a lease a human had
taken away and may have granted to the next in line.

The watch long-polls ``GET /v1/events`` for the lease's resource (one request waiting on the
server, counted among the principal's waits) and asks for the lease itself when a row of its
lock key ends a lease, so the loss is told as the server tells it. Whatever goes wrong with
the watch (a server that does not let the agent read its resource's rows, one that is
restarting) leaves the renewals to find out, as before: it is a shortcut, never the only way.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from writ.client import WATCH_WAIT_S, Client, Lease
from writ.core.errors import LeaseLost, WritError

__all__ = ["watch_lease"]

log = logging.getLogger("writ.run")

# rows that end a lease other than by its holder's release
ENDS = frozenset({"lease.revoked", "lease.expired"})
PAUSE_S = 1.0  # after a failed poll, or one answered at once with nothing, before the next


def watch_lease(client: Client, lease: Lease, done: threading.Event) -> threading.Thread:
    """Start watching ``lease`` in a daemon thread, until it is lost or ``done`` is set."""
    thread = threading.Thread(
        target=_watch, args=(client, lease, done), name="writ-run-watch", daemon=True
    )
    thread.start()
    return thread


def _watch(client: Client, lease: Lease, done: threading.Event) -> None:
    try:
        after = client.last_seq()
        if _ended(client, lease):  # before that row: a revoke between the grant and now
            return
        while not (done.is_set() or lease.lost.is_set()):
            asked = time.monotonic()
            try:
                out = client.events(lease.resource, after, WATCH_WAIT_S)
            except WritError as exc:
                if 400 <= exc.status < 500:  # not this agent's to read: renewals will tell
                    log.debug("not watching %s: %s", lease.lease_id, exc.message)
                    return
                done.wait(PAUSE_S)
                continue
            rows = out.get("rows") or []
            for row in rows:
                if row.get("event") in ENDS and row.get("lock_key") == lease.lock_key:
                    if _ended(client, lease, row):
                        return
            after = max(after, int(out.get("next_after_seq") or after))
            if not rows:  # a long poll that came back at once with nothing: not in a busy loop
                done.wait(max(0.0, PAUSE_S - (time.monotonic() - asked)))
    except Exception as exc:  # the client closed under it as writ run exits, or worse:
        if not done.is_set():  # either way the renewals still tell a loss
            log.debug("stopped watching %s: %s", lease.lease_id, exc)


def _ended(client: Client, lease: Lease, row: dict[str, Any] | None = None) -> bool:
    """Ask the server for the lease; if it no longer holds, mark it lost, saying who ended
    it when ``row`` (the row that did) tells. True if so."""
    data = client.get_lease(lease.lease_id)
    state = data.get("state")
    if state == "held":
        return False
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
            state=str(state),
            fencing_token=lease.fencing_token,
        )
    )
    return True
