"""Waiting for a lease from the CLI (`writ acquire --wait`, `writ run`): say what is waited for.

Before a blocking request joins the queue, :func:`check_not_self` reads the resource once
(``GET /v1/resources/{resource}``: the held leases it conflicts with) and refuses at once when
the caller itself holds one of them — waiting would only end when the caller's own lease
expires. While the request waits, :func:`live_line` rewrites one line on a terminal's stderr
every second: the holder, its intent, when its lease runs out, the caller's place in the queue
and how long it will still wait::

    waiting for prod/db: held by cost-agent ('consolidate') until 10:11:51Z (in 23s) · 2nd in queue · giving up in 27s

Off a terminal nothing is printed (scripts keep their stderr clean); the refusal, if the wait
runs out, names the holder as always.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

from writ.cli import answers
from writ.client import Client
from writ.core.errors import WritError
from writ.core.textsafe import printable

__all__ = ["SelfHeld", "check_not_self", "live_line", "status_line"]


class SelfHeld(Exception):
    """The caller asked to wait for a resource it holds itself."""

    def __init__(self, me: str, lease: dict[str, Any]) -> None:
        self.me, self.lease = me, lease
        super().__init__(
            f"{me} (you) already holds {lease.get('resource')} under lease "
            f"{lease.get('lease_id')} (fencing token {lease.get('fencing_token')}, expires "
            f"{_left(lease.get('expires_at'))}): waiting would only end when your own lease "
            f"does. Release it first (writ release {lease.get('lease_id')})"
        )


def _left(value: str | None) -> str:
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    left = (at - datetime.now(UTC)).total_seconds()
    return f"{at.strftime('%H:%M:%SZ')} (in {max(left, 0):.0f}s)"


def _fit(line: str, columns: int) -> str:
    """One terminal line (a wrapped line could not be rewritten in place): cut at a word."""
    if len(line) < columns:
        return line
    cut = line[: max(columns - 2, 1)]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut) + "…"


def _columns(out: IO[str]) -> int:
    """How wide the line may be, as the tables say it (cli.md): ``COLUMNS``, else the
    terminal's width, else 80 — also when the terminal says 0 (a pty nobody sized)."""
    with contextlib.suppress(ValueError):
        given = int(os.environ.get("COLUMNS", ""))
        if given > 0:
            return given
    try:
        columns = os.get_terminal_size(out.fileno()).columns
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        columns = 0
    return columns if columns > 0 else 80


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def check_not_self(client: Client, resource: str) -> str | None:
    """Raise :class:`SelfHeld` when the caller holds a lease ``resource`` conflicts with;
    return the caller's name (None when it cannot be read: the request goes ahead)."""
    try:
        me = str(client.whoami().get("name") or "") or None
        answer = client.resource(resource)
    except WritError:
        return None  # the request itself will say what is wrong
    state = answers.resource(answer, resource)  # one that is not writ's: Unavailable
    for lease in state.get("conflicting") or ([state["lease"]] if state.get("lease") else []):
        if me and isinstance(lease, dict) and lease.get("holder") == me:
            raise SelfHeld(me, lease)
    return me


def status_line(state: dict[str, Any], me: str | None, resource: str, left: float) -> str:
    """One line: who holds what ``resource`` waits for, the caller's place, time left."""
    held = state.get("conflicting") or ([state["lease"]] if state.get("lease") else [])
    parts = [f"waiting for {resource}"]
    if held:
        h = held[0]
        on = "" if h.get("resource") == resource else f" on {h.get('resource')}"
        parts[0] += (
            f": held by {h.get('holder')}{on} ({h.get('intent')!r}) until "
            f"{_left(h.get('expires_at'))}"
        )
    elif state.get("lock_delay_until"):
        parts[0] += f": lock-delay until {_left(state['lock_delay_until'])}"
    else:
        parts[0] += ": being granted"
    queue = state.get("queue") or []
    mine = [q for q in queue if me and q.get("principal") == me]
    if mine:
        parts.append(f"{_ordinal(int(mine[-1].get('position') or 0))} of {len(queue)} in queue")
    elif queue:
        parts.append(f"{len(queue)} in queue")
    parts.append(f"giving up in {max(left, 0):.0f}s")
    return printable(" · ".join(parts))


@contextlib.contextmanager
def live_line(
    url: str,
    token: str | None,
    resource: str,
    wait: float,
    me: str | None,
    stream: IO[str] | None = None,
    every: float = 1.0,
    columns: int | None = None,
) -> Iterator[None]:
    """While the block runs (a blocking acquire), rewrite one status line on ``stream``
    (default stderr) if it is a terminal, cut at a word to fit its ``columns``; the line is
    cleared when the block ends."""
    out = stream if stream is not None else sys.stderr
    if wait <= 0 or not out.isatty():
        yield
        return
    import time

    stop = threading.Event()
    deadline = time.monotonic() + wait
    width = _columns(out) if columns is None else columns

    def show() -> None:
        with Client(url, token, timeout=5) as reader:
            while not stop.is_set():
                with contextlib.suppress(WritError):
                    state = answers.resource(reader.resource(resource), resource)
                    if not stop.is_set():
                        line = status_line(state, me, resource, deadline - time.monotonic())
                        out.write("\r\x1b[K" + _fit(line, width))
                        out.flush()
                stop.wait(every)

    thread = threading.Thread(target=show, name="writ-wait-line", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(6)
        out.write("\r\x1b[K")
        out.flush()
