"""``python -m bench.seal_toy`` — a toy of the design that would let several servers write
faster than one: the batch checked and sealed at the chain head *inside* PostgreSQL.

Today a server with company takes the head lock, catches up, decides in Python and commits,
all under the lock (docs/scaling.md, "fifth look"), so the servers' batches alternate with
the decisions and a round trip inside each hold. In this toy, nothing is decided under the
lock: each process sends a batch of B acquires (then B releases) as one prepared call, with
the ledger rows' canonical bodies already built except for three placeholders — the fencing
token, ``seq`` and ``prev_hash``, each a raw U+0001 and a letter: canonical JSON writes U+0001
as an escape, so nothing else in a body can spell them. The function takes the head lock, checks
the batch's resources for a held lease (the conflict check), then per row draws the token,
fills the placeholders, hashes ``prev_hash + body`` with ``sha256()`` and inserts the lease and
the ledger row (writ's tables and indexes); it moves the head once. The lock spans the
database's execution and the fsync only.

It prints pairs/s for 1 writer × 16 (building each call's bodies after the call before
returned, and again building them while it is in the air — the overlap a lone writ server
gets by deciding ahead, and the fair baseline for several writers), 2 × 8 and 3 × 5, with the
writers' CPU, then checks the chain it wrote
(every hash recomputed in Python, ``seq`` without gaps, tokens rising in ``seq`` order).
There is no engine: the figures are the database's ceiling for this shape, not writ's. Left
out of the toy, and part of the design (docs/scaling.md, "What is not done"): the check of
what each transaction read against ``leases.wseq`` and the queue and policy versions (here,
held leases on the batch's own resources only), time assigned under the lock (here, by the
writer), the queue, and renumbering the tokens in the server's answers.

    python -m bench.seal_toy [--url postgresql://…/test] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import time
from collections.abc import Iterator
from typing import Any

SCHEMA = "bench_seal_toy"
DDL = """
DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}; SET search_path = {s};
CREATE TABLE head (id boolean PRIMARY KEY DEFAULT true CHECK (id), seq bigint NOT NULL,
  hash text NOT NULL, version bigint NOT NULL);
INSERT INTO head VALUES (true, 0, 'GENESIS', 0);
CREATE SEQUENCE tok AS bigint MINVALUE 1 CACHE 1;
CREATE TABLE leases (lease_id text PRIMARY KEY, resource text COLLATE "C" NOT NULL,
  holder text NOT NULL, intent text NOT NULL, fencing_token bigint NOT NULL UNIQUE,
  acquired_at float8 NOT NULL, expires_at float8 NOT NULL, ttl_s float8 NOT NULL,
  touches text NOT NULL, state text NOT NULL, rollback text, ended_at float8,
  request_id text, wseq bigint NOT NULL DEFAULT 0);
CREATE INDEX leases_held ON leases (resource) WHERE state = 'held';
CREATE INDEX leases_due ON leases (expires_at) WHERE state = 'held';
CREATE INDEX leases_by_resource ON leases (resource, acquired_at);
CREATE INDEX leases_by_request ON leases (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX leases_wseq ON leases (wseq);
CREATE TABLE audit (seq bigint PRIMARY KEY, ts float8 NOT NULL, event text NOT NULL,
  resource text COLLATE "C" NOT NULL, lock_key text, body text NOT NULL, hash text NOT NULL);
CREATE INDEX audit_by_resource ON audit (resource, ts);
CREATE INDEX audit_by_lock_key ON audit (lock_key) WHERE lock_key IS NOT NULL;
CREATE INDEX audit_by_ts ON audit (ts);
CREATE FUNCTION seal(body text, s bigint, prev text, t bigint) RETURNS text
  LANGUAGE sql IMMUTABLE AS $f$
  SELECT replace(replace(replace(body, '"' || chr(1) || 'S"', s::text),
    '"' || chr(1) || 'P"', '"' || prev || '"'), '"' || chr(1) || 'T"', coalesce(t::text, 'null')) $f$;
CREATE FUNCTION toy_acquire(ids text[], res text[], bodies text[], now float8)
  RETURNS void LANGUAGE plpgsql AS $f$
DECLARE s bigint; prev text; v bigint; t bigint; b text;
BEGIN
  SELECT seq, hash, version INTO s, prev, v FROM head FOR UPDATE;
  IF EXISTS (SELECT 1 FROM leases WHERE state = 'held' AND resource = ANY(res)) THEN
    RAISE EXCEPTION 'held' USING ERRCODE = 'serialization_failure';
  END IF;
  FOR i IN 1 .. array_length(ids, 1) LOOP
    s := s + 1; t := nextval('tok');
    b := seal(bodies[i], s, prev, t);
    prev := encode(sha256(convert_to(prev || b, 'UTF8')), 'hex');
    INSERT INTO leases VALUES (ids[i], res[i], 'agent', 'bench', t, now, now + 30, 30, '[]',
      'held', NULL, NULL, NULL, v + 1);
    INSERT INTO audit VALUES (s, now, 'lease.granted', res[i], ids[i], b, prev);
  END LOOP;
  UPDATE head SET seq = s, hash = prev, version = v + 1;
END $f$;
CREATE FUNCTION toy_release(ids text[], res text[], bodies text[], now float8)
  RETURNS void LANGUAGE plpgsql AS $f$
DECLARE s bigint; prev text; v bigint; b text;
BEGIN
  SELECT seq, hash, version INTO s, prev, v FROM head FOR UPDATE;
  FOR i IN 1 .. array_length(ids, 1) LOOP
    s := s + 1;
    b := seal(bodies[i], s, prev, NULL);
    prev := encode(sha256(convert_to(prev || b, 'UTF8')), 'hex');
    UPDATE leases SET state = 'released', ended_at = now, wseq = v + 1
      WHERE lease_id = ids[i] AND state = 'held';
    IF NOT FOUND THEN RAISE EXCEPTION 'not held' USING ERRCODE = 'serialization_failure'; END IF;
    INSERT INTO audit VALUES (s, now, 'lease.released', res[i], ids[i], b, prev);
  END LOOP;
  UPDATE head SET seq = s, hash = prev, version = v + 1;
END $f$;
"""
PLACEHOLDERS = {"fencing_token": "\u0001T", "prev_hash": "\u0001P", "seq": "\u0001S"}


def template(event: str, resource: str, lease_id: str) -> str:
    """A ledger row's canonical body (sorted keys, compact) with the three placeholders."""
    row = {
        "event": event,
        "resource": resource,
        "lock_key": lease_id,
        "agent_id": "agent",
        "lock_holder": "agent",
        "intent": "bench",
        "timestamp": "2026-12-05T08:00:00.000000Z",
        "notes": "why: " + "x" * 300,  # a body of a real row's size (~600 bytes)
        **PLACEHOLDERS,
    }
    text = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # JSON writes U+0001 escaped; only the three members get it raw, so nothing else in the
    # body (a client's text included) can match what the database replaces
    for key, mark in PLACEHOLDERS.items():
        escaped = json.dumps(mark)
        text = text.replace(f'"{key}":{escaped}', f'"{key}":"{mark}"', 1)
    return text


def _process(
    url: str, idx: int, batch: int, seconds: float, tag: str, ahead: bool, out: Any
) -> None:
    """One writer: acquires then releases ``batch`` resources of its own, one call each,
    until the window ends. With ``ahead``, each call's arguments are built while the call
    before it is in the air (what deciding ahead does for a lone writ server)."""
    import psycopg

    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, options=f"-c search_path={SCHEMA}"
        )
        res = [f"r/{tag}/{idx}/{c}" for c in range(batch)]

        def calls() -> Iterator[tuple[str, tuple[Any, ...]]]:
            k = 0
            while True:
                k += 1
                ids = [f"ls_{tag}_{idx}_{k}_{c}" for c in range(batch)]
                for fn, event in (
                    ("toy_acquire", "lease.granted"),
                    ("toy_release", "lease.released"),
                ):
                    bodies = [template(event, r, i) for r, i in zip(res, ids, strict=True)]
                    yield f"SELECT {fn}(%s, %s, %s, %s)", (ids, res, bodies, time.time())

        made = calls()
        calls_done, cpu0 = 0, None
        start = time.perf_counter() + 0.5
        stop = start + seconds
        nxt = next(made)
        while (now := time.perf_counter()) < stop:
            if cpu0 is None and now >= start:
                cpu0 = time.process_time()
            call = asyncio.ensure_future(conn.execute(*nxt, prepare=True))
            if ahead:
                await asyncio.sleep(0)  # the call is sent; build the next one meanwhile
                nxt = next(made)
                await call
            else:
                await call
                nxt = next(made)
            calls_done += now >= start
        await conn.close()
        pairs = calls_done // 2 * batch
        out.put((pairs / seconds, (time.process_time() - (cpu0 or 0.0)) / seconds))

    asyncio.run(main())


def check(url: str) -> int:
    """Recompute the toy's chain; the number of rows."""
    import psycopg

    with psycopg.connect(url, options=f"-c search_path={SCHEMA}") as c:
        prev, n, last_token = "GENESIS", 0, 0
        for seq, body, hash_ in c.execute("SELECT seq, body, hash FROM audit ORDER BY seq"):
            n += 1
            assert seq == n, f"gap before seq {seq}"
            assert hashlib.sha256((prev + body).encode()).hexdigest() == hash_, f"seq {seq}"
            row = json.loads(body)
            assert row["seq"] == seq and row["prev_hash"] == prev, f"seq {seq}"
            if row["fencing_token"] is not None:
                assert row["fencing_token"] > last_token, f"token at seq {seq}"
                last_token = row["fencing_token"]
            prev = hash_
        return n


def main(argv: list[str] | None = None) -> None:
    import psycopg

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    print("| writers | batch | pairs/s | writers' CPU (cores) |\n|---|---|---|---|")
    procs: list[Any] = []
    try:
        with psycopg.connect(args.url, autocommit=True) as c:
            c.execute(DDL.format(s=SCHEMA))
        for k, batch, ahead in ((1, 16, False), (1, 16, True), (2, 8, False), (3, 5, False)):
            out: Any = ctx.Queue()
            tag = f"{k}x{batch}{'a' if ahead else ''}"
            procs = [
                ctx.Process(
                    target=_process, args=(args.url, i, batch, args.seconds, tag, ahead, out)
                )
                for i in range(k)
            ]
            for p in procs:
                p.start()
            got = [out.get(timeout=args.seconds + 60) for _ in procs]
            for p in procs:
                p.join()
            rate, cpu = sum(g[0] for g in got), sum(g[1] for g in got)
            how = f"{k}, next call built while one is in the air" if ahead else str(k)
            print(f"| {how} | {batch} | {rate:,.0f} | {cpu:.2f} |", flush=True)
        print(f"\nchain checked: {check(args.url):,} rows, hashes, seq and tokens in order")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        with psycopg.connect(args.url, autocommit=True) as c:
            c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


if __name__ == "__main__":
    main()
