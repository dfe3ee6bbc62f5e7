"""Options and checks shared by the CLI's command modules (the modules under
writ.cli.commands)."""

from __future__ import annotations

import contextlib
import math
import os
import stat
from collections.abc import Callable, Iterator
from typing import IO, Any, NoReturn, TypeVar
from urllib.parse import unquote, urlparse

import click

from writ.client import DEFAULT_URL
from writ.core.errors import Invalid
from writ.core.files import replacing

F = TypeVar("F", bound=Callable[..., Any])


def api_options(
    f: F, token_help: str = "Bearer token of the principal to act as [env WRIT_TOKEN]."
) -> F:
    """``--url`` and ``--token`` on a command that talks to a server."""
    f = click.option("--token", envvar="WRIT_TOKEN", metavar="TOKEN", help=token_help)(f)
    return url_option()(f)


def url_option(help_text: str = "URL of the writ server [env WRIT_URL].") -> Callable[[F], F]:
    """``--url``: from ``WRIT_URL``, else the local default server."""
    return click.option(
        "--url", envvar="WRIT_URL", default=DEFAULT_URL, show_default=True, help=help_text
    )


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the JSON answer.")(f)


def store_option(help_text: str) -> Callable[[F], F]:
    return click.option("--store", metavar="URL", default=None, help=help_text)


def log_level_option(f: F) -> F:
    """``--log-level`` for the long-running proxies (gate, mcp)."""
    return click.option(
        "--log-level",
        default="warning",
        show_default=True,
        type=click.Choice(["debug", "info", "warning", "error"]),
        help="Log level on stderr.",
    )(f)


def existing_store(url: str) -> str:
    """Refuse to create an empty SQLite store where one was meant to be read."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :].split("?", 1)[0]
        if path and path != ":memory:" and not os.path.exists(path):
            raise Invalid(f"no store at {path} (from {url}): check the path")
    return url


def warn_of_flags(command: str, secrets: list[tuple[str, str, str]]) -> None:
    """Say so for each ``(parameter, what, variable)`` of ``secrets`` given as a flag: every
    user of the host reads a command line (``ps``), never another user's environment."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    for name, what, instead in secrets:
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            click.echo(
                f"{command}: warning: {what} is on the command line, where every user of "
                f"this host can read it (use {instead})",
                err=True,
            )


# ----------------------------------------------------------------------------- bad input
# A value no request can carry is refused as it is read, as one line `writ: invalid: ...` and
# exit 2 (writ.cli._helpers.Refused: an Invalid naming a field is a usage error), never a
# traceback from the JSON encoder ("Out of range float values are not JSON compliant"), from
# SQLite ("Python int too large to convert to SQLite INTEGER") or from the calendar.

LAST_SEQ = (1 << 63) - 1  # a seq, a fencing token: a signed 64-bit integer in every store


def _refuse(param: click.Parameter | None, message: str) -> NoReturn:
    flag = (param.opts[0] if param.opts else param.name) if param is not None else "a value"
    if param is not None and param.param_type_name == "argument":
        flag = (param.name or "argument").upper()
    raise Invalid(f"{flag}: {message}", field=flag)


class FiniteSeconds(click.FloatRange):
    """A number of seconds that a request can carry: never ``nan``, ``inf`` or ``1e400``
    (``float`` reads them all, and JSON has none of them). The server checks the range."""

    name = "seconds"

    def fail(
        self, message: str, param: click.Parameter | None = None, ctx: click.Context | None = None
    ) -> NoReturn:
        _refuse(param, message)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        out = super().convert(value, param, ctx)
        if not math.isfinite(out):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return out


class SeqNumber(click.IntRange):
    """A seq or a fencing token: a whole number from 0 to 2**63 - 1."""

    name = "integer"

    def __init__(self) -> None:
        super().__init__(0, LAST_SEQ)

    def fail(
        self, message: str, param: click.Parameter | None = None, ctx: click.Context | None = None
    ) -> NoReturn:
        _refuse(param, message)


def writable_file(path: str | None, flag: str = "--out") -> str | None:
    """``path`` once a file can be written there: its folder exists and may be written, and
    it is not a folder. Checked before any work is done (a report built for minutes, then a
    traceback for a typo in the folder's name). A write that still fails (``/dev/full``: no
    space) is :func:`write_failed`."""
    if path is None:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise Invalid(f"{flag} {path}: there is no folder {folder}", field="out")
    if os.path.isdir(path):
        raise Invalid(f"{flag} {path}: is a folder, not a file", field="out")
    target = path if os.path.exists(path) else folder
    if not os.access(target, os.W_OK):
        raise Invalid(f"{flag} {path}: permission denied", field="out")
    return path


def write_failed(path: str, exc: OSError, flag: str = "--out") -> Invalid:
    """A write to ``path`` that failed, as one line (exit 2)."""
    return Invalid(f"{flag} {path}: cannot write: {exc.strerror or exc}", field="out")


# ----------------------------------------------------------------------------- output files
# An output file never lands on a database: `--out w.db` (or a symlink to it, or to its -wal)
# once truncated the store behind an `exported 1 rows` and exit 0. Refused, before anything
# is read or written: the store's own file and its -wal/-shm/-journal (after symlinks, or a
# hard link to them), and any existing SQLite database (a file that starts with the SQLite
# header) or the -wal/-shm/-journal beside one, whether --store names it or not.

SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def _sqlite_path(store: str | None) -> str | None:
    """The file of a ``sqlite:///`` store URL, as :class:`SQLiteStore` reads it."""
    if not store or not store.lower().startswith("sqlite:"):
        return None
    path = unquote(urlparse(store).path)
    path = path[1:] if path.startswith("/") else path
    return None if not path or path == ":memory:" else path


def _regular(path: str) -> bool:
    """Is ``path`` (links followed) a regular file? Asked of the path as given, never of its
    realpath: ``/dev/fd/N`` of a pipe has a realpath that names nothing."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):  # absent, a dangling link, a NUL in the name
        return False


def _is_sqlite(path: str) -> bool:
    """Does ``path`` start with the SQLite header? Only a regular file is opened to look: a
    FIFO's open waited for a writer for ever, and a device's open may do something."""
    if not _regular(path):
        return False
    try:  # O_NONBLOCK: a FIFO put there since the stat is opened and seen, never waited on
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError:  # gone, unreadable: not a database we can see
        return False
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
        except OSError:
            return False


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def not_a_database(path: str | None, store: str | None = None, flag: str = "--out") -> str | None:
    """``path`` once writing it cannot destroy a database: refused (``invalid``, exit 2) when,
    after symlinks, it is the SQLite file of ``store`` or its -wal/-shm/-journal, or any
    existing SQLite database or one's -wal/-shm/-journal."""
    if path is None:
        return None
    real = os.path.realpath(path)
    named = _sqlite_path(store)
    if named is not None:
        db = os.path.realpath(named)
        for end in ("", *SQLITE_SIDECARS):
            if real == db + end or _same_file(path, db + end):
                what = f"the store's {end} file" if end else "the store"
                raise Invalid(
                    f"{flag} {path}: is {what} ({db + end}): refusing to overwrite it",
                    field="out",
                )
    for end in ("", *SQLITE_SIDECARS):
        if real.endswith(end) and _is_sqlite(base := real[: len(real) - len(end)]):
            what = f"the {end} file of the SQLite database {base}" if end else "a SQLite database"
            raise Invalid(f"{flag} {path}: is {what}: refusing to overwrite it", field="out")
    return path


def output_file(path: str | None, store: str | None = None, flag: str = "--out") -> str | None:
    """:func:`writable_file` and :func:`not_a_database`: checked before any work is done."""
    return not_a_database(writable_file(path, flag), store, flag)


@contextlib.contextmanager
def replaced_atomically(
    path: str, mode: int | None = None, newline: str | None = None, follow: bool = True
) -> Iterator[IO[str]]:
    """A text file written beside ``path`` (after symlinks; with ``follow=False`` a symlink
    at ``path`` is itself replaced) and renamed over it when the block ends without an
    error: a failed write leaves ``path`` as it was, never half a file. The new file has
    ``mode``, by default the one ``open(path, "w")`` would give a new one. Anything that
    exists and is not a regular file (``/dev/null``, ``/dev/full``, a FIFO, ``/dev/fd/N`` of
    a pipe, or a symlink to one of them) is opened as it is and written, never replaced.
    Every failure is an :class:`OSError` (:func:`write_failed`)."""
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)  # the path as given, links followed
    except FileNotFoundError:  # nothing there yet, or a dangling link: made at its target
        special = False
    except ValueError as exc:  # a NUL in the name
        raise OSError(str(exc)) from None
    if special:
        with open(path, "w", encoding="utf-8", newline=newline) as f:
            yield f
        return
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    with replacing(os.path.realpath(path) if follow else path, mode, newline) as f:
        yield f
