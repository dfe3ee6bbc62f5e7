"""Secrets writ is handed (a store URL's password) or keeps (its store file) stay out of
messages, logs, reports and other users' reach."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from click.testing import CliRunner

from writ.cli import main
from writ.core.errors import Invalid, WritError
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
    url = pg_schemas(request)
    scheme, rest = url.split("://", 1)
    userinfo, at, host = rest.rpartition("@")
    url = f"{scheme}://{userinfo.split(':', 1)[0] or 'postgres'}:{PW}@{host if at else rest}"
    for fmt in ("md", "json", "html"):
        result = CliRunner().invoke(
            main,
            ["postmortem", "--store", url, "--since", "-1h", "--format", fmt],
            env={"WRIT_ADMIN_TOKEN": None},
        )
        assert result.exit_code == 0, result.output
        assert PW not in result.output and ":***@" in result.output.replace("\\*", "*")
