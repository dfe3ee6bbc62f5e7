"""The SQLite store's schema: MIGRATIONS, applied in order (the store reads them at call time)."""

from __future__ import annotations

MIGRATIONS: list[tuple[str, str]] = [
    (
        "initial schema",
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta (key, value) VALUES ('fencing_token', 0);
        CREATE TABLE principals (
            name TEXT PRIMARY KEY, kind TEXT NOT NULL, vendor TEXT, wake TEXT,
            admin INTEGER NOT NULL DEFAULT 0, token_hash TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL);
        CREATE TABLE leases (
            lease_id TEXT PRIMARY KEY, resource TEXT NOT NULL, holder TEXT NOT NULL,
            intent TEXT NOT NULL, fencing_token INTEGER NOT NULL UNIQUE,
            acquired_at REAL NOT NULL, expires_at REAL NOT NULL, ttl_s REAL NOT NULL,
            touches TEXT NOT NULL, state TEXT NOT NULL, rollback TEXT, ended_at REAL,
            request_id TEXT);
        CREATE INDEX leases_held ON leases (resource) WHERE state = 'held';
        CREATE INDEX leases_due ON leases (expires_at) WHERE state = 'held';
        CREATE INDEX leases_by_resource ON leases (resource, acquired_at);
        CREATE INDEX leases_by_request ON leases (request_id) WHERE request_id IS NOT NULL;
        CREATE TABLE waiters (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, waiter_id TEXT NOT NULL UNIQUE,
            resource TEXT NOT NULL, principal TEXT NOT NULL, request TEXT NOT NULL,
            enqueued_at REAL NOT NULL, deadline REAL NOT NULL);
        CREATE INDEX waiters_by_resource ON waiters (resource, seq);
        CREATE TABLE objects (
            kind TEXT NOT NULL, id TEXT NOT NULL, resource TEXT NOT NULL, state TEXT NOT NULL,
            data TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL,
            PRIMARY KEY (kind, id));
        CREATE INDEX objects_by_resource ON objects (kind, resource);
        CREATE INDEX objects_due ON objects (kind, state, expires_at);
        CREATE TABLE audit (
            seq INTEGER PRIMARY KEY, ts REAL NOT NULL, event TEXT NOT NULL,
            resource TEXT NOT NULL, lock_key TEXT, body TEXT NOT NULL, hash TEXT NOT NULL);
        CREATE INDEX audit_by_resource ON audit (resource, ts);
        CREATE INDEX audit_by_lock_key ON audit (lock_key) WHERE lock_key IS NOT NULL;
        CREATE INDEX audit_by_ts ON audit (ts);
        CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
            BEGIN SELECT RAISE(ABORT, 'writ: audit rows are append-only'); END;
        CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
            BEGIN SELECT RAISE(ABORT, 'writ: audit rows are append-only'); END;
        """,
    ),
    (
        "principal lifecycle and queue membership",
        """
        ALTER TABLE principals ADD COLUMN queues TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE principals ADD COLUMN disabled_at REAL;
        ALTER TABLE principals ADD COLUMN disabled_reason TEXT;
        ALTER TABLE principals ADD COLUMN token_expires_at REAL;
        INSERT INTO meta (key, value) VALUES ('principals_gen', 0);
        CREATE TRIGGER principals_changed_u AFTER UPDATE ON principals BEGIN UPDATE meta SET value = value + 1 WHERE key = 'principals_gen'; END;
        CREATE TRIGGER principals_changed_d AFTER DELETE ON principals BEGIN UPDATE meta SET value = value + 1 WHERE key = 'principals_gen'; END;
        """,
    ),
    (
        "the chain's head kept beside the chain",
        # the last row's seq and hash, moved in the transaction that writes rows, once per
        # group commit (as PostgreSQL's audit_head): verify compares the chain's end with it,
        # so rows deleted from the end are missed, and the next row is numbered after them
        """
        CREATE TABLE audit_head (
            id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
        INSERT INTO audit_head (id, seq, hash) SELECT 1,
            coalesce((SELECT seq FROM audit ORDER BY seq DESC LIMIT 1), 0),
            coalesce((SELECT hash FROM audit ORDER BY seq DESC LIMIT 1), printf('%064d', 0));
        """,
    ),
]
