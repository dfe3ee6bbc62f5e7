"""Every ``writ`` command and subcommand explains itself: it has help text and ``--help`` exits 0."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from writ.cli import main


def _walk(
    group: click.Group, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    out: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in sorted(group.commands.items()):
        out.append(((*path, name), command))
        if isinstance(command, click.Group):
            out += _walk(command, (*path, name))
    return out


COMMANDS = _walk(main)


def test_the_walk_sees_every_group() -> None:
    """The walk reaches the commands that other modules add (lint, gate, the audit checkpoints)."""
    paths = {p for p, _ in COMMANDS}
    for path in [
        ("serve",),
        ("lint",),
        ("gate",),
        ("mcp",),
        ("wake",),
        ("postmortem",),
        ("audit", "verify-checkpoint"),
        ("policy", "explain"),
        ("principal", "rotate"),
    ]:
        assert path in paths


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    """Each command has a help text of its own, and ``writ ... --help`` prints it and exits 0."""
    command = dict(COMMANDS)[path]
    assert (command.help or "").strip(), f"writ {' '.join(path)} has no help text"
    result = CliRunner().invoke(main, [*path, "--help"], prog_name="writ")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: writ {' '.join(path)} ")


@pytest.mark.parametrize(
    ("path", "options"),
    [
        (("serve",), ["--checkpoint-every", "--checkpoint-key", "--checkpoint-dir"]),
        (("audit", "verify"), ["--checkpoint", "--pubkey"]),
    ],
)
def test_checkpoint_options_come_last(path: tuple[str, ...], options: list[str]) -> None:
    """The checkpoint options, declared on the commands themselves, keep their place at the end."""
    command = dict(COMMANDS)[path]
    names = [p.opts[0] for p in command.params if isinstance(p, click.Option)]
    assert names[-len(options) :] == options


@pytest.mark.parametrize(
    ("path", "option", "says"),
    [
        (("serve",), "--metrics-token", ["16 characters", "warned of"]),
        (("gate",), "--token", ["warned of"]),
        (("gate",), "--upstream", ["user:password@", "--upstream-headers-file"]),
        (("mcp",), "--token", ["warned of"]),
        (("mcp",), "--http-token", ["16 characters", "warned of"]),
    ],
)
def test_help_says_what_start_refuses_or_warns_of(
    path: tuple[str, ...], option: str, says: list[str]
) -> None:
    """A secret's option says that the flag is warned of, and what a start refuses in it."""
    command = dict(COMMANDS)[path]
    (param,) = [p for p in command.params if isinstance(p, click.Option) and option in p.opts]
    text = " ".join((param.help or "").split())
    for words in says:
        assert words in text, f"writ {' '.join(path)} {option}: {text}"


@pytest.mark.parametrize(
    ("module", "usage"),
    [
        ("writ.cli", "Usage: python -m writ.cli "),
        ("writ.cli_lint", "Usage: python -m writ.cli_lint "),
    ],
)
def test_python_dash_m_still_runs(module: str, usage: str) -> None:
    """``python -m writ.cli`` (the package's __main__) and the documented ``python -m writ.cli_lint``
    (an alias of writ.cli.commands.lint) both run their command."""
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(usage)
