"""Secrets writ is handed (a store URL's password) or keeps (its SQLite store) stay out of
messages, logs, reports and other users' reach (docs/security.md, "Secrets on the host")."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from writ.cli import main
from writ.core.errors import Invalid, WritError
from writ.engine import Engine
from writ.stores import open_store, redact

PW = "S3CRETpw"


def test_redact_hides_every_form_of_a_store_password() -> None:
    """The password before the host and libpq's password options are ***; the rest, and a
    URL without one, are shown as given."""
    assert redact(f"postgresql://writ:{PW}@db:5432/writ") == "postgresql://writ:***@db:5432/writ"
    assert redact(f"postgresql://writ:p@{PW}@db/w") == "postgresql://writ:***@db/w"
    assert redact(f"postgresql://:{PW}@db/w") == "postgresql://:***@db/w"
    assert (
        redact(f"postgresql://db/w?schema=s&password={PW}&sslPassword={PW}")
        == "postgresql://db/w?schema=s&password=***&sslPassword=***"
    )
    assert redact(f"postgresql://u:{PW}@[::1/w") == "postgresql://u:***@[::1/w"  # unparsable
    assert redact("sqlite:///writ.db") == "sqlite:///writ.db"
    assert redact("sqlite:////var/lib/a@b:c.db") == "sqlite:////var/lib/a@b:c.db"


@pytest.mark.parametrize(
    "url",
    [
        f"postgressql://writ:{PW}@127.0.0.1:1/writ",  # a typo in the scheme
        f"postgresql://writ:{PW}@127.0.0.1:1/",  # no database
        f"postgresql://writ:{PW}@[::1/writ",  # does not parse
        f"postgresql://writ:{PW}%ZZ@127.0.0.1:1/writ",  # libpq quoted the bad escape
    ],
)
def test_a_store_url_refused_never_shows_its_password(url: str) -> None:
    """Each refusal of a store URL names it with its password as ***: in the error, in
    ``writ serve --check`` and in an offline command (they quoted the URL, or libpq's
    "invalid percent-encoded token: <password>")."""
    with pytest.raises(Invalid) as info:
        open_store(url)
    assert PW not in info.value.message
    runner = CliRunner()
    for args in (["serve", "--check", "--store", url], ["audit", "verify", "--store", url]):
        result = runner.invoke(main, args, env={"WRIT_ADMIN_TOKEN": None})
        assert result.exit_code != 0
        assert PW not in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


async def test_libpq_is_never_handed_the_password_inside_the_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The password goes to libpq as a connection option of its own, decoded; the URL libpq
    parses has none, so its complaint about another part of it (an unknown option here,
    refused before any connection) and the traceback logged beside it do not carry it."""
    import psycopg

    store: Any = open_store(f"postgresql://writ:{PW}%25x@127.0.0.1:1/writ")
    assert PW not in store.url and PW not in store._conninfo
    options = {k: v for k, v in store._kwargs.items() if k != "autocommit"}
    given = psycopg.conninfo.make_conninfo(store._conninfo, **options)
    assert psycopg.conninfo.conninfo_to_dict(given)["password"] == f"{PW}%x"
    store = open_store(f"postgresql://writ:{PW}@127.0.0.1:1/writ?foo=bar")
    caplog.set_level(logging.ERROR)
    with pytest.raises(WritError) as info:
        await store.open()
    assert "foo" in info.value.message and PW not in info.value.message
    assert "foo" in caplog.text and PW not in caplog.text
    option: Any = open_store(f"postgresql://writ@127.0.0.1:1/writ?password={PW}")
    assert PW not in option.url and PW not in option._conninfo
    assert option._kwargs["password"] == PW


def test_a_postmortem_names_its_store_without_the_password(
    pg_schemas: Any, request: pytest.FixtureRequest
) -> None:
    """``writ postmortem --store`` names the store it read in the report (shared in incident
    reviews): the password is *** there (the report carried the URL as given)."""
    url = _with_password(pg_schemas(request))

    async def make() -> None:  # a postmortem reads a store; it makes none
        store = open_store(url)
        await store.open()
        await store.close()

    asyncio.run(make())
    for fmt in ("md", "json", "html"):
        result = CliRunner().invoke(
            main,
            ["postmortem", "--store", url, "--since", "-1h", "--format", fmt],
            env={"WRIT_ADMIN_TOKEN": None},
        )
        assert result.exit_code == 0, result.output
        assert PW not in result.output and ":***@" in result.output.replace("\\*", "*")


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


async def test_a_new_sqlite_store_is_for_its_owner_alone(tmp_path: Path, umask_022: None) -> None:
    """The database, its -wal and its -shm are 0600 under the usual umask (they were 0644:
    any user of the host read the token hashes, the PagerDuty routing keys and Slack
    webhook URLs of the wake routes, and the ledger)."""
    db = tmp_path / "writ.db"
    engine = Engine(open_store(f"sqlite:///{db}"))
    await engine.start(background=False)
    try:
        await engine.add_principal(None, "pager", "agent", wake="pagerduty:abcdefgh12345678")
        for name in ("writ.db", "writ.db-wal", "writ.db-shm"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    finally:
        await engine.stop()


async def test_a_sqlite_store_others_may_read_is_warned_of(
    tmp_path: Path, umask_022: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A store made before (0644) is opened as it is, with a warning naming the chmod."""
    db = tmp_path / "writ.db"
    sqlite3.connect(db).close()
    db.chmod(0o644)
    store = open_store(f"sqlite:///{db}")
    await store.open()
    await store.close()
    assert f"chmod 600 {db} {db}-wal {db}-shm" in caplog.text
    assert "(644)" in caplog.text


async def test_a_sqlite_store_at_a_symlink_to_nothing_is_refused(tmp_path: Path) -> None:
    """A symlink planted where the store would be made is not followed to make its target."""
    (tmp_path / "writ.db").symlink_to(tmp_path / "planted.db")
    with pytest.raises(Invalid, match="symlink"):
        await open_store(f"sqlite:///{tmp_path / 'writ.db'}").open()
    assert not (tmp_path / "planted.db").exists()


def test_the_gates_upstream_credentials_come_from_a_file_only_its_user_reads(
    tmp_path: Path,
) -> None:
    """``--upstream-headers-file`` keeps the upstream's credentials off the command line
    (``--upstream-header`` was the only way, readable by every user of the host, agents
    included); a file other users may read is refused, and a line that is no header is
    named by its number, not quoted. An upstream URL with credentials is refused."""
    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\npath = "/admin/*"\nresource = "prod/db"\n')
    headers = tmp_path / "headers"
    headers.write_text(f"Authorization: Bearer {PW}\n")
    base = ["gate", "--url", "http://127.0.0.1:1", "--token", "writ_x", "--upstream"]
    args = [*base, "http://127.0.0.1:2", "--routes", str(routes)]
    runner = CliRunner()
    headers.chmod(0o644)
    result = runner.invoke(main, [*args, "--upstream-headers-file", str(headers)])
    assert result.exit_code == 2 and "chmod 600" in result.output, result.output
    headers.chmod(0o600)
    headers.write_text(f"# comment\n\nAuthorization Bearer {PW}\n")
    result = runner.invoke(main, [*args, "--upstream-headers-file", str(headers)])
    assert result.exit_code == 2 and "line 3" in result.output, result.output
    assert PW not in result.output
    # nor in the upstream's URL, which the gate printed in its listening line
    result = runner.invoke(main, [*base, f"http://adm:{PW}@127.0.0.1:2", "--routes", str(routes)])
    assert result.exit_code == 2 and "--upstream-headers-file" in result.output, result.output
    assert PW not in result.output


def test_a_writ_token_is_redacted_wherever_a_log_line_carries_it() -> None:
    """A token writ made, pasted into a path or an agent's intent, leaves ``writ serve``'s
    lines as ``writ_[redacted]`` (only one after ``Bearer`` was caught); writ's own names
    that begin ``writ_`` stay."""
    from writ.engine.principals import new_token
    from writ.telemetry.logs import ConsoleFormatter, JsonFormatter, Scrub, Scrubbed

    token = new_token()
    record = logging.LogRecord(
        "writ.access", logging.INFO, __file__, 1, f"GET /v1/principals/{token} 404", None, None
    )
    record.writ = {"notes": f"granted for {token!r}; writ_migrations is at 9"}
    for inner in (JsonFormatter(), ConsoleFormatter()):
        line = Scrubbed(inner, Scrub()).format(record)
        assert token[5:] not in line and line.count("writ_[redacted]") == 2, line
        assert "writ_migrations" in line


def test_a_writ_token_run_on_into_a_word_is_redacted_too() -> None:
    """A token with a letter, digit, ``_`` or ``-`` right after it (``${TOKEN}_old``, a path's
    ``${TOKEN}x``) was left whole in the line: the match wanted its end there."""
    from writ.engine.principals import new_token
    from writ.telemetry.logs import Scrub

    token = new_token()
    for text in (f"rotate WRIT_TOKEN={token}_old and {token}2", f"/v1/leases/{token}x/release"):
        line = Scrub().clean(text)
        assert token[5:30] not in line and "writ_[redacted]" in line, line


def test_the_gates_log_lines_never_carry_its_credentials() -> None:
    """``writ gate`` logs through logging.basicConfig's handler, now scrubbed of its token
    and its --upstream-headers-file values."""
    import io

    from writ.telemetry.logs import scrub_root

    root, writ = logging.getLogger(), logging.getLogger("writ")
    saved = root.handlers[:], writ.handlers[:], writ.propagate
    stream = io.StringIO()
    root.handlers[:] = [logging.StreamHandler(stream)]
    # as in writ gate's own process: writ's lines reach the root logger (an in-process
    # writ serve earlier in a test run gave the writ logger a handler of its own)
    writ.handlers[:], writ.propagate = [], True
    try:
        scrub_root(["gate-token-value", f"Bearer {PW}"])
        logging.getLogger("writ.gate").warning("sent gate-token-value and Bearer %s", PW)
    finally:
        root.handlers[:], writ.handlers[:], writ.propagate = saved
    assert PW not in stream.getvalue() and "gate-token-value" not in stream.getvalue()
    assert stream.getvalue().count("[redacted]") == 2


@pytest.mark.parametrize("token", ["change-me", "0123456789abcdef"])
async def test_a_short_admin_token_is_warned_of_at_every_start(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    token: str,
) -> None:
    """WRIT_ADMIN_TOKEN may be any text, kept as a fast SHA-256: under 16 characters each
    start that finds it admin's token says so, naming the rotation (nothing said before)."""
    monkeypatch.setenv("WRIT_ADMIN_TOKEN", token)
    for _ in range(2):  # the start that bootstraps admin, then a restart
        caplog.clear()
        engine = Engine(open_store(f"sqlite:///{tmp_path / 'writ.db'}"))
        with caplog.at_level(logging.WARNING, logger="writ.engine"):
            await engine.start(background=False)
        await engine.stop()
        short = len(token) < 16
        assert ("writ principal rotate admin" in caplog.text) is short, caplog.text
        assert token not in caplog.text


def _with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    userinfo, at, host = rest.rpartition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0] or 'postgres'}:{PW}@{host if at else rest}"


def test_scripts_serve_keeps_the_store_url_off_the_command_line(
    pg_schemas: Any, request: pytest.FixtureRequest
) -> None:
    """scripts/serve hands WRIT_STORE to writ serve in the environment (it put it on the
    command line as --store, password and all) and names the store without its password."""
    from tests.server_fixtures import serve_script

    env = {k: v for k, v in os.environ.items() if not k.startswith("WRIT_")}
    env["WRIT_STORE"] = _with_password(pg_schemas(request))
    with serve_script(env) as (proc, seen):
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()  # writ serve (exec'd)
    assert b"serve" in cmdline and PW.encode() not in cmdline, cmdline
    assert "has no admin" in "".join(seen) and PW not in "".join(seen)


def test_a_writ_url_with_credentials_is_refused_never_quoted(tmp_path: Path) -> None:
    """A password in the writ server's URL (WRIT_URL, --url) is refused before any request:
    httpx sent it as Basic credentials in place of the bearer token, and every message
    naming the server (not reachable at ..., the gate's and writ mcp's checks) quoted it."""
    from writ.client import AsyncClient, Client

    for make in (Client, AsyncClient):
        with pytest.raises(Invalid, match="carries credentials") as info:
            make(f"http://ops:{PW}@127.0.0.1:1", "writ_x")
        assert PW not in info.value.message
    assert Client("http://127.0.0.1:1/a@b", "t").url == "http://127.0.0.1:1/a@b"  # a path's @
    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\npath = "/admin/*"\nresource = "prod/db"\n')
    url = f"http://ops:{PW}@127.0.0.1:1"
    gate = ["gate", "--url", url, "--token", "writ_x", "--upstream", "http://127.0.0.1:2"]
    for args in (
        ["status", "--url", url, "--token", "writ_x"],
        [*gate, "--routes", str(routes)],
        ["mcp", "--url", url, "--token", "writ_x"],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code != 0 and "carries credentials" in result.output, result.output
        assert PW not in result.output


def test_writ_serve_warns_of_a_secret_given_as_a_flag_only(tmp_path: Path) -> None:
    """A store password or metrics token on the command line is warned of (every user of
    the host reads it); the same from WRIT_STORE and WRIT_METRICS_TOKEN is not."""
    url = f"postgresql://writ:{PW}@127.0.0.1:1/writ"
    runner = CliRunner()
    flags = ["serve", "--check", "--store", url, "--metrics-token", "m" * 16]
    said = runner.invoke(main, flags).stderr
    assert said.count("is on the command line") == 2 and PW not in said, said
    env = {"WRIT_STORE": url, "WRIT_METRICS_TOKEN": "m" * 16}
    said = runner.invoke(main, ["serve", "--check"], env=env).stderr
    assert "command line" not in said and PW not in said, said


async def test_the_password_reaches_postgresql_decoded() -> None:
    """libpq sends the password it is handed on its own, as the URL meant it (``%25`` is
    ``%``): a server that asks for it in clear text (a stand-in, not PostgreSQL) reads it."""
    import asyncio
    import struct

    heard: asyncio.Queue[bytes] = asyncio.Queue()

    async def postgres(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # SSLRequest and GSSENCRequest are declined, then the startup packet
                size = struct.unpack("!i", await reader.readexactly(4))[0]
                body = await reader.readexactly(size - 4)
                if body[:4] not in (struct.pack("!i", 80877103), struct.pack("!i", 80877104)):
                    break
                writer.write(b"N")
            writer.write(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            await writer.drain()
            assert await reader.readexactly(1) == b"p"
            size = struct.unpack("!i", await reader.readexactly(4))[0]
            await heard.put((await reader.readexactly(size - 4)).rstrip(b"\0"))
        finally:
            writer.close()

    server = await asyncio.start_server(postgres, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for url in (
            f"postgresql://writ:{PW}%25x@127.0.0.1:{port}/writ",
            f"postgresql://writ@127.0.0.1:{port}/writ?password={PW}%25x",
        ):
            with pytest.raises(WritError) as info:
                await open_store(url).open()
            assert PW not in info.value.message
            assert await asyncio.wait_for(heard.get(), 10) == f"{PW}%x".encode()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("given", [[], ["--http-token", "short"]])
def test_writ_mcp_over_http_needs_an_endpoint_token(given: list[str]) -> None:
    """``writ mcp --transport http`` without ``--http-token`` (16 characters or more) is
    refused before anything starts: loopback is no boundary between a host's users, and any
    process on it acted as the agent, with its writ token."""
    pytest.importorskip("mcp")
    args = ["mcp", "--transport", "http", "--url", "http://127.0.0.1:1", "--token", "writ_x"]
    result = CliRunner().invoke(main, [*args, *given], env={"WRIT_MCP_HTTP_TOKEN": None})
    assert result.exit_code == 2 and "--http-token" in result.output, result.output


def test_writ_serve_refuses_a_short_metrics_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A metrics token under 16 characters is refused at start, as ``--check`` refuses it
    (it served with one, e.g. ``short``)."""
    from writ.api import serve as api_serve

    served: list[Any] = []
    monkeypatch.setattr(api_serve, "run", lambda *a, **k: served.append(a))
    result = CliRunner().invoke(main, ["serve"], env={"WRIT_METRICS_TOKEN": "short"})
    assert result.exit_code == 2 and "16" in result.output and not served, result.output
    assert "short" not in result.output.replace("short enough", "")
    result = CliRunner().invoke(main, ["serve"], env={"WRIT_METRICS_TOKEN": "m" * 16})
    assert result.exit_code == 0 and served, result.output


def test_writ_gate_and_mcp_warn_of_a_token_given_as_a_flag(tmp_path: Path) -> None:
    """The gate's and writ mcp's tokens on the command line are warned of (an agent on the
    host reads them with ps); from their variables nothing is said."""
    pytest.importorskip("mcp")
    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\npath = "/admin/*"\nresource = "prod/db"\n')
    gate = ["gate", "--url", "http://127.0.0.1:1", "--upstream", "http://127.0.0.1:2"]
    gate += ["--routes", str(routes)]
    mcp = ["mcp", "--url", "http://127.0.0.1:1", "--transport", "http"]
    runner = CliRunner()
    for args, variables in (
        (gate, {"WRIT_GATE_TOKEN": "writ_x"}),
        (mcp, {"WRIT_TOKEN": "writ_x", "WRIT_MCP_HTTP_TOKEN": "h" * 16}),
    ):
        flags = [*args, "--token", "writ_x"]
        flags += ["--http-token", "h" * 16] if "mcp" in args else []
        said = runner.invoke(main, flags).stderr
        assert said.count("is on the command line") == (2 if "mcp" in args else 1), said
        said = runner.invoke(main, args, env=variables).stderr
        assert "command line" not in said, said
