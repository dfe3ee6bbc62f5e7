"""Logs: ``writ serve --log-format console|json`` (docs/operations.md "Logs").

Standard-library logging, with a JSON formatter of our own (one object per line): measured
against structlog's JSONRenderer for the same 10-field line (``bench/log_bench.py``), both
cost about 9 µs a line, so writ keeps one logging system — uvicorn's and every library's —
and no extra dependency.

Two loggers carry the operational lines, both at INFO:

* ``writ.access`` — one line per HTTP request: ``request_id`` (the caller's ``X-Request-Id``
  when it is a plain token, else one of ours, echoed back), ``method``, ``route`` (the
  template), ``path``, ``status``, ``duration_ms``, ``principal``, ``resource``,
  ``lease_id``, ``fencing_token``, ``outcome`` (``ok`` or the error code), and
  ``trace_id``/``span_id`` when tracing is on;
* ``writ.decision`` — one line per audit row this process commits (a grant, a refusal, a
  release, a page, ...): ``request_id``, ``event``, ``principal``, ``resource``,
  ``lock_holder``, ``lock_key``, ``fencing_token``, ``seq``, ``notes``, trace ids.

No secrets: nothing logs a header or a body, and every formatted line passes through
:class:`Scrub`, which replaces the secrets the server knows (the admin token, the metrics
token, the webhook secret), anything after ``Bearer ``, any token writ made (``writ_…``,
wherever it was pasted) and PagerDuty routing keys with ``[redacted]`` (one pass over the
finished line: measured 17 µs a line when it cleaned each field of the record, ~1 µs this
way). ``writ gate`` scrubs its lines the same way (:func:`scrub_root`), knowing its token
and the values of its ``--upstream-headers-file``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import TYPE_CHECKING, Any

from writ.core.textsafe import dumps, hex_escaped

if TYPE_CHECKING:
    from writ.engine import Engine
    from writ.telemetry.observe import Rows

ACCESS = logging.getLogger("writ.access")
DECISION = logging.getLogger("writ.decision")
FORMATS = ("console", "json")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',]+")
_PD = re.compile(r"pagerduty:[A-Za-z0-9_-]+")
# a token writ made (writ_ and 43 of base64url, and whatever runs on from it unbroken: a token
# pasted as ${TOKEN}_old kept its whole), wherever a line carries it: a path it was pasted
# into, an agent's intent, a traceback's text
_WRIT_TOKEN = re.compile(r"writ_[A-Za-z0-9_-]{43,}")


class Scrub:
    """Replace known secrets (and bearer tokens, writ's tokens, PagerDuty routing keys) in
    a line."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        known = [x for x in (secrets or []) if x and len(x) >= 4]
        # a secret with a quote or a backslash appears escaped inside a JSON line
        self.secrets = sorted(
            {form for x in known for form in (x, json.dumps(x)[1:-1])}, key=len, reverse=True
        )

    def clean(self, text: str) -> str:
        for x in self.secrets:
            if x in text:
                text = text.replace(x, "[redacted]")
        if "earer" in text:
            text = _BEARER.sub(r"\1[redacted]", text)
        if "pagerduty:" in text:
            text = _PD.sub("pagerduty:[redacted]", text)
        if "writ_" in text:
            text = _WRIT_TOKEN.sub("writ_[redacted]", text)
        return text


class Scrubbed(logging.Formatter):
    """A formatter whose every line — message, fields, traceback — passes :class:`Scrub`."""

    def __init__(self, inner: logging.Formatter, scrub: Scrub) -> None:
        super().__init__()
        self.inner, self.scrub = inner, scrub

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub.clean(self.inner.format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message`` and the
    record's ``writ`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__.get("writ")
        if fields:
            out.update((k, v) for k, v in fields.items() if v is not None)
        if record.exc_info:
            out["exception"] = record.exc_text or self.formatException(record.exc_info)
        return dumps(out, separators=(",", ":"), default=str)


class ConsoleFormatter(logging.Formatter):
    """``time level logger message key=value ...`` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        message = _one_line(record.getMessage())
        line = f"{_iso(record.created)} {record.levelname:<7} {record.name}: {message}"
        fields = record.__dict__.get("writ")
        if fields:
            line += " " + " ".join(
                f"{k}={_one_line(str(v))}" for k, v in fields.items() if v is not None
            )
        if record.exc_info:
            line += "\n" + (record.exc_text or self.formatException(record.exc_info))
        return line


_WRIT_REFUSAL = re.compile(r"writ\.core\.errors\.\w+: (.+)")


class StartFailed(logging.Filter):
    """A start that failed on a refusal writ words itself (a store it cannot reach, another
    blast radius on a shared store) is logged as that one line, not as the traceback
    Starlette hands uvicorn as the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if isinstance(msg, str) and msg.startswith("Traceback (most recent call last):"):
            said = _WRIT_REFUSAL.fullmatch(msg.rstrip().rsplit("\n", 1)[-1])
            if said is not None:
                record.msg, record.args = f"writ cannot start: {said.group(1)}", None
        return True


def setup(fmt: str = "console", level: str = "info", secrets: list[str] | None = None) -> None:
    """Send writ's and uvicorn's logs to stderr in ``fmt`` at ``level``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    inner = JsonFormatter() if fmt == "json" else ConsoleFormatter()
    handler.setFormatter(Scrubbed(inner, Scrub(secrets)))
    handler.addFilter(StartFailed())
    lean_records()
    lvl = getattr(logging, level.upper())
    for name in ("writ", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(lvl)
        lg.propagate = False
    logging.getLogger("uvicorn.access").disabled = True  # writ.access replaces it


def scrub_root(secrets: list[str]) -> None:
    """Every handler of the root logger (``logging.basicConfig``'s) scrubs its lines."""
    scrub = Scrub(secrets)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(Scrubbed(handler.formatter or logging.Formatter(), scrub))


def lean_records() -> None:
    """writ's formats use no caller, thread or process fields: stop computing them for
    every record, process-wide (the logging HOWTO's "Optimization" section; measured
    16 -> 12.5 µs a JSON line). Called by :func:`setup`, i.e. in ``writ serve``."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def log_decisions(engine: Engine) -> None:
    """One ``writ.decision`` line per committed audit row of ``engine``."""
    from writ.telemetry.observe import observed

    observed(engine).add_sink(_decisions, _deciding)


def _deciding() -> bool:
    return DECISION.isEnabledFor(logging.INFO)


def _decisions(rows: Rows, context: dict[str, str]) -> None:
    if not DECISION.isEnabledFor(logging.INFO):
        return
    for sealed, fields in rows:
        DECISION.info(
            sealed.event,
            extra={
                "writ": {
                    "request_id": context.get("request_id"),
                    "event": sealed.event,
                    "seq": sealed.seq,
                    "principal": fields.get("agent_id"),
                    "resource": sealed.resource,
                    "lock_holder": sealed.lock_holder,
                    "lock_key": sealed.lock_key,
                    "fencing_token": fields.get("fencing_token"),
                    "notes": fields.get("notes"),
                    "trace_id": context.get("trace_id"),
                    "span_id": context.get("span_id"),
                }
            },
        )


def _one_line(text: str) -> str:
    """``text`` with every character :func:`~writ.core.textsafe.printable` escapes written
    as an escape: a request path decoded from ``%0A`` must not start a forged line of its
    own, nor a C1 control (``%C2%9B``, a one-byte CSI) or a bidi override in a path or a
    row's notes drive or reorder the terminal (JSON lines escape them: :func:`dumps`)."""
    return hex_escaped(text)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"
