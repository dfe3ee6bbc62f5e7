"""``python -m bench.log_bench`` — one structured log line, standard library vs structlog.

The measurement behind writ's choice of the standard library for ``--log-format json``
(:mod:`writ.telemetry.logs`): the access line's fields, rendered to JSON and written to an in-memory
stream, 50,000 lines per round, 5 rounds, both ways in the same round. structlog is not a
writ dependency: ``pip install structlog`` to run this.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time

N = 50_000
FIELDS = {
    "request_id": "rq_8c1f2a",
    "method": "POST",
    "route": "/v1/leases",
    "status": 201,
    "duration_ms": 0.412,
    "principal": "perf-agent",
    "resource": "prod/db",
    "lease_id": "ls_01HX",
    "fencing_token": 8841,
    "outcome": "ok",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update(record.__dict__.get("writ", {}))
        return json.dumps(out, separators=(",", ":"), default=str)


def main() -> None:
    try:
        import structlog
    except ImportError:
        sys.exit("structlog is not installed: pip install structlog")
    std_buf = io.StringIO()
    handler = logging.StreamHandler(std_buf)
    handler.setFormatter(JsonFormatter())
    std = logging.getLogger("bench")
    std.addHandler(handler)
    std.setLevel(logging.INFO)
    std.propagate = False
    sl_buf = io.StringIO()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sl_buf),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )
    sl = structlog.get_logger("bench")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(N):
            std.info("request", extra={"writ": FIELDS})
        a = (time.perf_counter() - t) / N * 1e6
        t = time.perf_counter()
        for _ in range(N):
            sl.info("request", **FIELDS)
        b = (time.perf_counter() - t) / N * 1e6
        print(f"stdlib {a:.2f} µs/line  structlog {b:.2f} µs/line  ratio {b / a:.2f}")
        for buf in (std_buf, sl_buf):
            buf.seek(0)
            buf.truncate()


if __name__ == "__main__":
    main()
