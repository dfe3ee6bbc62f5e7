"""Signed checkpoints: an Ed25519 signature over the audit chain's head.

The hash chain proves that the rows agree with each other; it cannot prove that nobody
rewrote them all. Someone with write access to the database can change a row and re-hash
every row after it, and ``writ audit verify`` will say ``ok``. A checkpoint closes that gap:
it signs the head ``(seq, hash, time)`` with a key that does not live in the database, and
once a copy of it is kept elsewhere (a ticket, a bucket, another host), a rewrite of any row
up to ``seq`` is found, because the row at ``seq`` no longer has the signed hash.

File format (UTF-8 text, one ``key: value`` per line, ``\\n`` line ends)::

    writ-checkpoint: 1
    seq: 1042
    hash: 9f2c...                 (64 hex: the hash of row ``seq``)
    time: 2026-05-16T02:21:00.000000Z   (that row's timestamp)
    signed_at: 2026-05-16T02:21:01.500000Z
    key_id: 5d1f0c2a9b7e4410      (first 16 hex of sha256 of the raw public key)
    public_key: <base64 of the 32-byte raw Ed25519 public key>
    signature: <base64 of the 64-byte Ed25519 signature>

The signature covers the exact bytes of every line before the ``signature:`` line, newlines
included. Readers ignore lines they do not know (they are still covered by the signature).
The embedded public key makes a checkpoint self-checking; to know *who* signed it, verify
with the key you trust (``--pubkey``): a forger can always sign with a key of their own.

Keys are PEM files: the private key PKCS#8 (written mode 0600, refused when other users
may read it), the public key SubjectPublicKeyInfo next to it as ``KEY.pub`` (``writ audit
keygen``; :mod:`writ.evidence.keys`).

:class:`Checkpointer` writes one every N rows from inside ``writ serve`` (an engine ticker).
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from writ.core.bulk import PAGE, make_way
from writ.core.clock import parse_time, rfc3339
from writ.core.errors import Invalid, WritError
from writ.core.files import replacing
from writ.core.ledger import (
    GENESIS,
    chain_short_of,
    kept_row_differs,
    kept_stored_oddly,
    named,
    verify,
)
from writ.core.textsafe import printable
from writ.evidence.keys import MAX_FILE as MAX_FILE
from writ.evidence.keys import (
    CheckpointError,
    generate_key,
    key_id,
    load_private_key,
    raw_public,
    read_small,
    write_key,
)
from writ.evidence.sentinel import Sentinel
from writ.stores.accounted import Opened, tables_disagree

if TYPE_CHECKING:
    from writ.engine import Engine
    from writ.stores.base import Store

log = logging.getLogger("writ.audit")
__all__ = [
    "MARK",
    "Checkpoint",
    "CheckpointError",
    "Checkpointer",
    "Outcome",
    "check_all",
    "generate_key",
    "key_id",
    "latest_in",
    "load_private_key",
    "load_public_key",
    "make",
    "raw_public",
    "read_checkpoint",
    "sign",
    "signable",
    "verify_store",
    "write_checkpoint",
    "write_key",
]

FORMAT = "1"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FILE = re.compile(r"checkpoint-(\d+)\.txt")
#: the server's signed mark of the furthest row its standing verify verified (a checkpoint
#: file, rewritten as the verify moves on; :class:`Checkpointer`)
MARK = "verified.txt"
_KNOWN = frozenset(
    ("writ-checkpoint", "seq", "hash", "time", "signed_at", "key_id", "public_key", "signature")
)  # any other line is kept, in order, as an extra (still signed)


# ----------------------------------------------------------------------------- the key to trust
def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """A public key from a PEM public key, a PEM private key, or a checkpoint file."""
    data = read_small(path, "public key")
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    if data.startswith(b"writ-checkpoint:"):
        return Ed25519PublicKey.from_public_bytes(_parse_bytes(data, path).public_key)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(f"{path} is not an Ed25519 public key")
    return key


# ----------------------------------------------------------------------------- the file
@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    time: str | None
    signed_at: str
    public_key: bytes
    signature: bytes
    extra: tuple[tuple[str, str], ...] = ()
    source: str | None = field(default=None, compare=False)  # the file it was read from

    def body(self) -> str:
        """The signed text: every line before ``signature:``."""
        lines = [
            ("writ-checkpoint", FORMAT),
            ("seq", str(self.seq)),
            ("hash", self.hash),
            ("time", self.time or "-"),
            ("signed_at", self.signed_at),
            *self.extra,
            ("key_id", key_id(self.public_key)),
            ("public_key", base64.b64encode(self.public_key).decode()),
        ]
        return "".join(f"{k}: {v}\n" for k, v in lines)

    def text(self) -> str:
        return self.body() + f"signature: {base64.b64encode(self.signature).decode()}\n"

    @property
    def name(self) -> str:
        return self.source or f"checkpoint at seq {self.seq}"

    def check_signature(self, trusted: Ed25519PublicKey | None = None) -> None:
        """Raise :class:`CheckpointError` unless the signature holds (by ``trusted``)."""
        if trusted is not None and raw_public(trusted) != self.public_key:
            raise CheckpointError(
                f"{self.name} was signed by key {key_id(self.public_key)}, not by the trusted "
                f"key {key_id(raw_public(trusted))}"
            )
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(
                self.signature, self.body().encode()
            )
        except (InvalidSignature, ValueError):
            raise CheckpointError(
                f"{self.name}: the signature does not match its contents (the file was "
                "edited after signing, or signed by another key)"
            ) from None


def sign(
    key: Ed25519PrivateKey, seq: int, hash_: str, at: str | None, signed_at: str | None = None
) -> Checkpoint:
    unsigned = Checkpoint(
        seq, hash_, at, signed_at or rfc3339(time.time()) or "", raw_public(key.public_key()), b""
    )
    return replace(unsigned, signature=key.sign(unsigned.body().encode()))


def parse(text: str, source: str | None = None) -> Checkpoint:
    """Read a checkpoint's text; the signature is *not* checked here."""
    where = source or "checkpoint"
    values: dict[str, str] = {}
    order: list[tuple[str, str]] = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(": ")
        if not sep or not key or key != key.strip():
            raise CheckpointError(f"{where}:{n}: not a 'key: value' line: {line[:60]!r}")
        if printable(line) != line:  # verify prints its values: nothing a terminal obeys
            raise CheckpointError(f"{where}:{n}: a control or bidi character: {line[:60]!r}")
        if key in values:
            raise CheckpointError(f"{where}:{n}: {key} appears twice")
        values[key] = value
        order.append((key, value))
    if values.get("writ-checkpoint") != FORMAT:
        raise CheckpointError(f"{where}: not a writ checkpoint (first line 'writ-checkpoint: 1')")
    missing = [
        k for k in ("seq", "hash", "signed_at", "public_key", "signature") if k not in values
    ]
    if missing:
        raise CheckpointError(f"{where}: missing {', '.join(missing)}")
    try:
        seq = int(values["seq"])
        public = base64.b64decode(values["public_key"], validate=True)
        signature = base64.b64decode(values["signature"], validate=True)
    except ValueError as exc:
        raise CheckpointError(f"{where}: bad seq, public_key or signature: {exc}") from None
    if seq < 1 or not _HEX64.fullmatch(values["hash"]) or len(public) != 32:
        raise CheckpointError(f"{where}: seq must be >= 1, hash 64 hex, public_key 32 bytes")
    extra = tuple((k, v) for k, v in order if k not in _KNOWN)
    t = values.get("time")
    cp = Checkpoint(
        seq,
        values["hash"],
        None if t in (None, "-") else t,
        values["signed_at"],
        public,
        signature,
        extra,
        source,
    )
    if "key_id" in values and values["key_id"] != key_id(public):
        raise CheckpointError(f"{where}: key_id does not belong to public_key")
    if cp.text() != _normal(text):  # the signature too: one spelling of its bytes
        raise CheckpointError(
            f"{where}: lines are out of order or reformatted; the signed text cannot be rebuilt"
        )
    return cp


def _normal(text: str) -> str:
    return "".join(line + "\n" for line in text.split("\n") if line.strip())


def read_checkpoint(path: str | Path) -> Checkpoint:
    return _parse_bytes(read_small(path, "checkpoint"), path)


def _parse_bytes(data: bytes, path: str | Path) -> Checkpoint:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    return parse(text, str(path))


def write_checkpoint(cp: Checkpoint, path: str | Path) -> Path:
    """Write atomically (a reader never sees half a checkpoint)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with replacing(p, 0o644, newline="\n") as f:  # public: a checkpoint is for copying elsewhere
        f.write(cp.text())
    return p


def latest_in(directory: str | Path) -> Path | None:
    """The checkpoint file with the highest seq in a Checkpointer directory."""
    newest = _newest(Path(directory))
    return newest[1] if newest else None


def _newest(d: Path) -> tuple[int, Path] | None:
    """``(seq, file)`` of the newest checkpoint file in ``d``, by the seq in its name."""
    if not d.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _FILE.fullmatch(p.name))]
    return max(found, key=lambda f: f[0], default=None)


# ----------------------------------------------------------------------------- the ledger
async def head(store: Store) -> tuple[int, str, str | None]:
    """``(seq, hash, timestamp)`` of the last audit row."""

    async def fn(tx: Any) -> tuple[int, str, str | None]:
        seq, h = await tx.audit_head()
        if seq == 0:
            return 0, h, None
        rows = await tx.audit_rows(seq - 1, 1)
        return seq, h, rows[0]["timestamp"] if rows else None

    result: tuple[int, str, str | None] = await store.read(fn)
    return result


async def make(store: Store, key: Ed25519PrivateKey) -> Checkpoint:
    """Verify ``store`` as ``writ audit verify`` does, then sign the last row verified: a
    checkpoint never vouches for a ledger (or tables) that did not verify when it was made."""
    from writ.stores.migrate import verify_store as verify_all

    out = await verify_all(store)
    if out.rows == 0 and out.ok:
        raise CheckpointError("the audit log is empty: there is nothing to checkpoint yet")
    return sign(key, out.rows, out.head, signable(out.to_dict(), await _row(store, out.rows)))


def signable(verified: dict[str, Any], row: dict[str, Any] | None) -> str | None:
    """The timestamp of the row a checkpoint is to sign, once ``verified`` (a verify's
    answer) says the ledger verifies through it, with its hash; else :class:`CheckpointError`.
    Both may come from a server: what a checkpoint would carry of them (the seq, the hash, the
    time) must be what writ writes, or nothing is signed."""
    seq, head = verified.get("rows"), verified.get("head")
    if not (
        isinstance(seq, int)
        and not isinstance(seq, bool)
        and seq >= 0
        and isinstance(head, str)
        and _HEX64.fullmatch(head)
    ):
        raise CheckpointError(
            f"the verify answered rows {printable(repr(seq))[:40]} and head "
            f"{printable(repr(head))[:80]}, which writ never sends: nothing signed"
        )
    if not verified.get("ok"):
        at = verified.get("first_bad_seq")
        raise CheckpointError(
            f"the ledger does not verify{f' at seq {at}' if at else ''}: {verified.get('reason')}; "
            "writ signs no checkpoint of it (run writ audit verify, and keep the store as evidence)"
        )
    if (
        row is None
        or row.get("seq") != verified.get("rows")
        or row.get("hash") != verified.get("head")
    ):
        raise CheckpointError(
            f"row {verified.get('rows')} is not the row verify ended at (a row was added or "
            "changed meanwhile, or the server answered otherwise): try again"
        )
    timestamp = row.get("timestamp")
    try:
        return rfc3339(parse_time(timestamp)) if isinstance(timestamp, str) else None
    except WritError:  # a time no writ row shows: signed without one, as an older row's
        return None


async def _row(store: Store, seq: int) -> dict[str, Any] | None:
    rows: list[dict[str, Any]] = await store.read(lambda tx: tx.audit_rows(seq - 1, 1))
    return rows[0] if rows else None


@dataclass(slots=True)
class Outcome:
    """The result of checking a ledger against checkpoints."""

    ok: bool
    rows: int
    head: str
    first_bad_seq: int | None = None
    reason: str | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    lease_id: str | None = None  # a held lease the ledger does not account for
    principal: str | None = None  # a principal the ledger does not account for
    waiter_id: str | None = None  # a queued request the ledger does not account for
    policy_object: str | None = None  # a policy object likewise, as "KIND ID"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "ok": self.ok,
            "rows": self.rows,
            "head": self.head,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "checkpoints": self.checkpoints,
        }
        return out | named(self)


def check_all(checkpoints: Sequence[Checkpoint], trusted: Ed25519PublicKey | None) -> None:
    """Raise :class:`CheckpointError` unless each signature holds (by ``trusted``) and the
    checkpoints of one seq agree on its hash: two that do not say the ledger was forked or
    one of them is forged, and neither may be dropped in favour of the other."""
    seen: dict[int, Checkpoint] = {}
    for cp in checkpoints:
        cp.check_signature(trusted)
        other = seen.setdefault(cp.seq, cp)
        if other.hash != cp.hash:
            raise CheckpointError(
                f"{other.name} and {cp.name} disagree at seq {cp.seq} ({other.hash[:12]}… "
                f"signed by key {key_id(other.public_key)}, {cp.hash[:12]}… by key "
                f"{key_id(cp.public_key)}): one of them is forged, or the ledger was forked"
            )


async def verify_store(
    store: Store,
    checkpoints: Sequence[Checkpoint],
    trusted: Ed25519PublicKey | None = None,
) -> Outcome:
    """Recompute the whole chain and prove it still extends every checkpoint.

    Fails, naming the row, when a row up to a checkpoint was changed without re-hashing
    (the chain breaks there), when rows were re-hashed to hide a change (the row at the
    checkpoint's seq has another hash: the change lies after the last checkpoint that still
    matches), or when rows were removed (the ledger ends before the checkpoint's seq).
    """
    check_all(checkpoints, trusted)
    want = {cp.seq: cp for cp in sorted(checkpoints, key=lambda c: c.seq)}
    report = {
        cp.seq: {"seq": cp.seq, "hash": cp.hash, "file": cp.source, "ok": None}
        for cp in want.values()
    }
    matched = 0  # highest checkpoint seq found intact
    seq, prev, total = 1, GENESIS, 0
    kept = await store.read(lambda tx: tx.audit_head())  # the head the store keeps
    opened = Opened()  # what the rows leave open, checked against the tables

    def fail(bad: int | None, reason: str) -> Outcome:
        for r in report.values():
            if r["ok"] is None:
                r["ok"] = False
        return Outcome(False, total, prev, bad, reason, list(report.values()))

    if (odd := kept_stored_oddly(kept)) is not None:
        return fail(None, odd)
    async for chunk in store.audit_records(batch=PAGE):
        began = time.perf_counter()
        part = verify(chunk, seq, prev)
        await make_way(time.perf_counter() - began)
        total += part.rows
        if not part.ok:
            bad = part.first_bad_seq or seq + part.rows
            after = [s for s in want if s >= bad]
            if after:
                return fail(
                    bad,
                    f"row {bad} changed after checkpoint seq {after[0]} was signed: {part.reason}",
                )
            return fail(bad, f"row {bad}: {part.reason}")
        first = chunk[0][0]
        for s in [s for s in want if first <= s <= chunk[-1][0]]:
            got = chunk[s - first][2]
            if got != want[s].hash:
                return fail(
                    s,
                    (
                        f"row {s} no longer has the hash checkpoint {want[s].name} signed "
                        f"({want[s].hash[:12]}…, now {got[:12]}…): rows "
                        f"{matched + 1}..{s} were rewritten and re-hashed after it was signed"
                    ),
                )
            report[s]["ok"] = True
            matched = s
        if (why := kept_row_differs(chunk, kept)) is not None:
            return fail(kept[0], why)
        opened.feed(chunk)
        seq, prev = seq + part.rows, part.head
    if (why := chain_short_of(total, kept)) is not None:
        return fail(total + 1, why)
    missing = [s for s in want if s > total]
    if missing:
        return fail(
            total + 1,
            (
                f"the ledger ends at seq {total}, before checkpoint seq {missing[0]}: "
                f"rows {total + 1}..{missing[0]} were removed"
            ),
        )
    found = await tables_disagree(store, opened)  # the tables against the rows verified
    if found is not None:
        field, name, why = found
        return Outcome(False, total, prev, None, why, list(report.values()), **{field: name})
    return Outcome(True, total, prev, None, None, list(report.values()))


# ----------------------------------------------------------------------------- the server
class Checkpointer:
    """Write a signed checkpoint into ``directory`` every ``every`` audit rows.

    Hooks itself into the engine's periodic duties (after each sweep, about once a second
    in ``writ serve``). Files are ``checkpoint-<seq, 12 digits>.txt``; on start it carries on
    from the newest one in the directory when that verifies by its key (a newest file that
    does not, junk included, is refused when the next is due, below; it is never waited
    for). Copy them off the host to make them worth having.

    It signs only a row the standing verify (``sentinel``: the server's, or one of its own)
    has just verified, with the tables. When the ledger does not verify, no checkpoint is
    written (the sentinel logs why): rows rewritten and re-hashed after a pass verified them
    no longer get the next checkpoint signed over them.

    Before signing, it reads its newest file again: a checkpoint that does not verify by its
    own key, or whose row the ledger no longer holds with the signed hash (rewritten and
    re-hashed after it was signed, while the server was down, say, or removed: the ledger
    ends before it), stops the signing, with an ERROR line naming its seq (:attr:`refused`),
    for as long as it stands: the files outlive the process, so a restart does not sign over
    the rewrite either.

    Between checkpoints it keeps :data:`MARK` (``verified.txt``, a checkpoint file too),
    signed over the furthest row the standing verify has verified, rewritten as that moves
    on. On start, the furthest row the mark or the newest checkpoint vouches for is handed to
    the standing verify (:meth:`_seed`): its first pass then finds rows rewritten and
    re-hashed, or removed, while no server ran, up to the last pass before the stop.
    """

    def __init__(
        self,
        engine: Engine,
        key: Ed25519PrivateKey,
        directory: str | Path,
        every: int = 1000,
        sentinel: Sentinel | None = None,
    ) -> None:
        if every < 1:
            raise Invalid("checkpoint every N rows needs N >= 1", field="every")
        self.engine = engine
        self.key = key
        self.directory = Path(directory)
        self.every = int(every)
        self.last_seq = 0  # the newest checkpoint's seq, once it verifies by this key (_seed)
        self.written: list[Path] = []
        self.refused: str | None = None  # why the newest checkpoint stops the signing
        self.sentinel = sentinel or Sentinel(engine, every=0)
        self.marked = self._seed()  # the row the mark signs: seq, hash
        self._mark_failed: str | None = None
        engine.add_ticker(self.tick)

    def _seed(self) -> tuple[int, str]:
        """The furthest row the mark or the newest checkpoint vouches for (by this key), made
        the standing verify's :attr:`~writ.evidence.sentinel.Sentinel.vouched`: a process
        that starts afresh then reads that row again at its first pass, as it would a row it
        verified itself. A file that does not verify by this key vouches for nothing (the
        newest checkpoint's is logged when signing is due; the mark's here)."""
        newest = _newest(self.directory)
        best = (0, GENESIS)
        # only a checkpoint that verifies names the seq the next one counts from: a junk
        # checkpoint-000099999999.txt would have it wait, silently, for rows that never come
        for path in (newest[1] if newest else None, self.directory / MARK):
            if path is None or not path.exists():
                continue
            try:
                cp = read_checkpoint(path)
                cp.check_signature(self.key.public_key())
            except CheckpointError as exc:
                if path.name == MARK:
                    log.error("writ ignores %s: it does not verify: %s", path, exc)
                continue
            if newest is not None and path == newest[1] and cp.seq == newest[0]:
                self.last_seq = cp.seq
            best = max(best, (cp.seq, cp.hash), key=lambda m: m[0])
        if best[0] > self.sentinel.vouched[0] and self.sentinel.rewritten is None:
            self.sentinel.vouched = best
        return best

    async def _mark(self) -> None:
        """Sign :data:`MARK` over the standing verify's furthest row, once it moved on."""
        seq, h = self.sentinel.vouched
        if seq <= self.marked[0] or self.sentinel.rewritten is not None:
            return
        row = await _row(self.engine.store, seq)
        at = row.get("timestamp") if row is not None and row.get("hash") == h else None
        try:
            write_checkpoint(sign(self.key, seq, h, at), self.directory / MARK)
        except OSError as exc:
            if str(exc) != self._mark_failed:
                log.warning("writ could not write %s: %s", self.directory / MARK, exc)
            self._mark_failed = str(exc)
            return
        self.marked, self._mark_failed = (seq, h), None

    async def tick(self) -> Path | None:
        await self._mark()
        seq, _h, _at = await head(self.engine.store)
        if seq < self.last_seq:  # the ledger ends before the newest checkpoint: say so
            short = f"the ledger ends at seq {seq}, before checkpoint seq {self.last_seq}"
            self._refuse(await self._newest_differs() or short)
            return None
        if seq == 0 or seq - self.last_seq < self.every:
            return None
        verified = await self.sentinel.verified()
        if verified is None or verified[0] - self.last_seq < self.every:
            return None
        seq, h, at = verified
        if self._refuse(await self._newest_differs()):
            return None
        cp = sign(self.key, seq, h, at)
        path = write_checkpoint(cp, self.directory / f"checkpoint-{seq:012d}.txt")
        self.last_seq = seq
        self.written.append(path)
        return path

    def _refuse(self, why: str | None) -> bool:
        """Whether the signing stops for ``why``: logged once, while the same reason stands."""
        if why is not None and why != self.refused:
            log.error("writ signs no checkpoint: %s", why)
        self.refused = why
        return why is not None

    async def _newest_differs(self) -> str | None:
        """Why the newest checkpoint file in the directory does not hold (by this key, and
        against the ledger's row at its seq), or None (also when there is none)."""
        newest = _newest(self.directory)
        if newest is None:
            return None
        seq, path = newest
        try:
            cp = read_checkpoint(path)
            cp.check_signature(self.key.public_key())
        except (CheckpointError, OSError) as exc:
            return f"the newest checkpoint, seq {seq} ({path}), does not verify: {exc}"
        if cp.seq != seq:
            return f"the newest checkpoint {path} says seq {cp.seq}, not seq {seq}"
        row = await _row(self.engine.store, seq)
        got = row.get("hash") if row is not None and row.get("seq") == seq else None
        if got != cp.hash:
            now = f"now {got[:12]}…" if isinstance(got, str) else "the row is gone"
            return (
                f"row {seq} no longer has the hash checkpoint seq {seq} ({path}) signed "
                f"({cp.hash[:12]}…, {now}): rows up to it were rewritten and re-hashed, or "
                "removed, after it was signed (run writ audit verify --checkpoint, and keep "
                "the store as evidence)"
            )
        return None
