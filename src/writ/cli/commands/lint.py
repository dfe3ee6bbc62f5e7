"""``writ lint``: judge audit rows from any system — a thin click layer over :mod:`writ.lint`.

The main CLI registers it with ``main.add_command(lint_command)``; ``python -m writ.cli_lint``
runs it alone. Output goes out row by row, so memory stays flat however long the input is.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import click

from writ.cli.table import fold, terminal_width
from writ.core.errors import Invalid, WritError
from writ.core.textsafe import dumps, printable
from writ.evidence.lint import (
    VERDICTS,
    Linter,
    Result,
    Unreadable,
    iter_rows,
    load_principals,
    parse_principals,
)

__all__ = ["LintRun", "fetch_principals", "lint_command", "run"]

FORMATS = ("text", "json", "jsonl")
_ACCEPT_LINE = '{"row": %d, "verdict": "accept", "findings": []}\n'
_STYLE = {"accept": "green", "suspicious": "yellow", "reject": "red", "contaminated": "magenta"}


@dataclass
class LintRun:
    """What a run saw: verdict counts, warnings, unreadable rows and inputs."""

    counts: Counter[str] = field(default_factory=Counter)
    warned: int = 0
    unreadable: int = 0
    failed_inputs: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    @property
    def exit_code(self) -> int:
        """0 every row accepted, 1 any row not accepted, 2 any input could not be read."""
        if self.unreadable or self.failed_inputs:
            return 2
        return 0 if self.counts["accept"] == self.rows else 1

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            **{v: self.counts[v] for v in VERDICTS},
            "warnings": self.warned,
            "unreadable": self.unreadable,
            "failed_inputs": self.failed_inputs,
            "exit": self.exit_code,
        }


def fetch_principals(url: str, token: str | None, timeout: float = 10.0) -> dict[str, str]:
    """name -> kind from a writ server's registry (``GET {url}/v1/principals``).

    Read as the writ client reads any answer (:mod:`writ.client._wire`): the whole exchange
    ends within ``timeout`` (not each read: a byte a second held the run for minutes), the
    body is refused past ``MAX_ANSWER_BYTES`` (an endless body grew memory until MemoryError),
    and a redirect is not followed. Any failure is :class:`Invalid`, its text escaped."""
    import httpx  # only when asked: lint itself needs no network

    from writ.client._wire import bounded, capped, deadline

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    target = url.rstrip("/") + "/v1/principals"
    at = deadline.set(time.monotonic() + timeout)
    try:
        with (
            bounded(httpx.Client(headers=headers, timeout=timeout)) as http,
            http.stream("GET", target) as resp,
        ):
            body = capped(resp.iter_bytes(), target, "GET /v1/principals")
    except httpx.TimeoutException:
        raise Invalid(f"no whole answer from {printable(target)} within {timeout:g}s") from None
    except (httpx.HTTPError, ValueError) as exc:  # ValueError: httpx's refusal of a bad URL
        raise Invalid(printable(f"cannot reach {target}: {exc}")) from None
    except WritError as exc:  # the answer was larger than a client reads
        raise Invalid(printable(exc.message)) from None
    finally:
        deadline.reset(at)
    if resp.status_code != 200:
        shown = body[:200].decode("utf-8", "replace")
        raise Invalid(printable(f"GET {target} answered {resp.status_code}: {shown}"))
    try:
        return parse_principals(json.loads(body))
    except RecursionError:
        raise Invalid(f"GET {target} answered JSON nested too deeply") from None
    except ValueError:
        raise Invalid(f"GET {target} did not answer JSON") from None


def _open(name: str) -> IO[bytes]:
    if name == "-":
        return sys.stdin.buffer
    return open(name, "rb")  # closed by run()


def run(
    inputs: Iterable[str],
    linter: Linter,
    fmt: str = "jsonl",
    out: IO[str] | None = None,
    err: Callable[[str], None] | None = None,
    open_input: Callable[[str], IO[Any]] = _open,
) -> LintRun:
    """Lint every input into ``out`` in ``fmt``; report unopenable inputs through ``err``."""
    out = out if out is not None else sys.stdout
    err = err or (lambda msg: click.echo(printable(msg), err=True))
    names = list(inputs)
    many = len(names) > 1
    state = LintRun()
    write = out.write
    if fmt == "json":
        write('{"rows": [')
    sep = "\n"
    for name in names:
        shown = "<stdin>" if name == "-" else name
        file = shown if many else None  # rows name their input only when there are several
        try:
            stream = open_input(name)
        except OSError as exc:
            state.failed_inputs.append(shown)
            err(f"writ lint: cannot read {shown}: {exc.strerror or exc}")
            continue
        try:
            for n, item in iter_rows(stream):
                result = item.result() if isinstance(item, Unreadable) else linter.check(item)
                state.counts[result.verdict] += 1
                if result.error is not None:
                    state.unreadable += 1
                elif result.findings and result.verdict == "accept":
                    state.warned += 1
                if fmt == "jsonl":
                    if not result.findings and not many:
                        write(_ACCEPT_LINE % n)
                    else:
                        write(dumps(_obj(result, n, file)) + "\n")
                elif fmt == "json":
                    obj = _obj(result, n, file, guessed=True)
                    write(sep + dumps(obj))
                    sep = ",\n"
                else:
                    _text(out, result, n, file)
        except BrokenPipeError:
            raise  # our reader went away (`| head`): not an input problem
        except OSError as exc:  # a read error mid-file: keep what was judged, name the input
            state.failed_inputs.append(shown)
            err(f"writ lint: cannot read {shown}: {exc.strerror or exc}")
        finally:
            if name != "-":
                stream.close()
    if fmt == "json":
        write('\n], "summary": ' + json.dumps(state.summary()) + "}\n")
    elif fmt == "text":
        _text_summary(out, state)
    return state


def _obj(result: Result, n: int, name: str | None, *, guessed: bool = False) -> dict[str, Any]:
    obj = result.to_dict(n, guessed=guessed)
    return {"file": name, **obj} if name is not None else obj


def _text(out: IO[str], result: Result, n: int, name: str | None) -> None:
    """A verdict line, then a line per finding (click drops the colours off a terminal)."""
    where = f"{name} row {n}" if name else f"row {n}"
    label = click.style(result.verdict, fg=_STYLE[result.verdict], bold=True)
    warn = len(result.warnings)
    extra = f" ({warn} warning{'s' * (warn != 1)})" if warn and result.verdict == "accept" else ""
    click.echo(f"{printable(where)}: {label}{extra}", file=out)
    width = terminal_width(out)
    for f in result.findings:
        tag = "warning" if f.is_warning else f.verdict
        styled = click.style(f"{tag:<12}", fg="cyan" if f.is_warning else _STYLE[f.verdict])
        line = f"  {tag:<12} {f.rule:<28} {printable(f.reason)}"  # reasons name their field
        line = fold(line, width) if width and width > 40 else line
        click.echo(f"  {styled}{line[14:]}", file=out)  # the tag styled, folded as plain text


def _text_summary(out: IO[str], state: LintRun) -> None:
    parts = ", ".join(f"{state.counts[v]} {v}" for v in VERDICTS)
    line = f"\n{state.rows} row{'s' * (state.rows != 1)}: {parts}"
    if state.warned:
        line += f"; {state.warned} accepted with warnings"
    if state.unreadable:
        line += f"; {state.unreadable} unreadable"
    if state.failed_inputs:
        line += f"; could not read {', '.join(state.failed_inputs)}"
    click.echo(line, file=out)


def _principals(files: Iterable[str], server: str | None, token: str | None) -> dict[str, str]:
    kinds: dict[str, str] = {}
    if server:
        kinds.update(fetch_principals(server, token))
    for path in files:  # a file is the more deliberate statement: it wins over the server
        kinds.update(load_principals(path))
    return kinds


@click.command("lint")
@click.argument(
    "files", nargs=-1, metavar="FILE...", type=click.Path(dir_okay=False, allow_dash=True)
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text: a verdict per row, a line per finding, a summary. jsonl: one "
    '{"row", "verdict", "findings"} object per input row, in input order. '
    'json: one document {"rows": [...], "summary": {...}}.',
)
@click.option(
    "--fragment",
    is_flag=True,
    help="Judge only the fields each row has (for partial rows pasted into threads): "
    "absent columns are not flagged.",
)
@click.option(
    "--principals",
    "principals_files",
    multiple=True,
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="JSON or TOML file mapping principal name -> kind (agent, human, queue, "
    'portal), e.g. {"svc-ops-princess": "queue"}; wins over name heuristics. '
    "May be repeated.",
)
@click.option(
    "--server",
    metavar="URL",
    help="Take principal kinds from a writ server's registry (GET URL/v1/principals).",
)
@click.option(
    "--token",
    envvar="WRIT_TOKEN",
    metavar="TOKEN",
    help="Bearer token for --server (default: $WRIT_TOKEN).",
)
@click.pass_context
def lint_command(
    ctx: click.Context,
    files: tuple[str, ...],
    fmt: str,
    fragment: bool,
    principals_files: tuple[str, ...],
    server: str | None,
    token: str | None,
) -> None:
    """Judge audit rows from any system by writ's lint rules.

    FILE is JSONL (blank lines skipped), a JSON array, or JSON objects (pretty-printed rows
    may span lines); '-' reads stdin, as does no FILE when stdin is not a terminal. Each row
    gets accept, suspicious, reject or contaminated (worst finding wins); a finding whose
    verdict is accept is a warning. Principal kinds come from --principals / --server, else
    from documented name heuristics (and the finding says so).

    Exit status: 0 every row accepted, 1 any row not accepted, 2 unreadable input (a
    malformed line is reported as a row, with its line number, and the run goes on).
    """
    if not files:
        if sys.stdin.isatty():
            raise click.UsageError("give FILE... or '-' (or pipe rows into stdin)")
        files = ("-",)
    try:
        kinds = _principals(principals_files, server, token)
    except (OSError, Invalid) as exc:
        why = getattr(exc, "message", None) or exc
        click.echo(printable(f"writ lint: principals: {why}"), err=True)
        ctx.exit(2)
    try:
        state = run(files, Linter(fragment=fragment, kinds=kinds), fmt, out=sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # `writ lint big.jsonl | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        ctx.exit(1)
    ctx.exit(state.exit_code)


if __name__ == "__main__":  # pragma: no cover
    lint_command()
