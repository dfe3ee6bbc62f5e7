import io, json, logging, time, sys
import structlog

N = 50000
fields = dict(
    request_id="rq_8c1f2a",
    method="POST",
    route="/v1/leases",
    status=201,
    duration_ms=0.412,
    principal="perf-agent",
    resource="prod/db",
    lease_id="ls_01HX",
    fencing_token=8841,
    outcome="ok",
)


# stdlib
class JsonFormatter(logging.Formatter):
    def format(self, r):
        d = {
            "ts": r.created,
            "level": r.levelname.lower(),
            "logger": r.name,
            "event": r.getMessage(),
        }
        d.update(r.__dict__.get("writ", {}))
        return json.dumps(d, separators=(",", ":"), default=str)


buf = io.StringIO()
h = logging.StreamHandler(buf)
h.setFormatter(JsonFormatter())
lg = logging.getLogger("bench")
lg.addHandler(h)
lg.setLevel(logging.INFO)
lg.propagate = False


def run_std():
    t = time.perf_counter()
    for _ in range(N):
        lg.info("request", extra={"writ": fields})
    return (time.perf_counter() - t) / N * 1e6


buf2 = io.StringIO()
structlog.configure(
    processors=[
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.processors.JSONRenderer(),
    ],
    logger_factory=structlog.PrintLoggerFactory(buf2),
    cache_logger_on_first_use=True,
    wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
)
sl = structlog.get_logger("bench")


def run_sl():
    t = time.perf_counter()
    for _ in range(N):
        sl.info("request", **fields)
    return (time.perf_counter() - t) / N * 1e6


r = []
for i in range(5):
    r.append((run_std(), run_sl()))
    buf.seek(0)
    buf.truncate()
    buf2.seek(0)
    buf2.truncate()
for a, b in r:
    print(f"stdlib {a:.2f} us/line  structlog {b:.2f} us/line  ratio {b / a:.2f}")
