"""``writ lint`` alone, at its documented path: ``python -m writ.cli_lint`` and
``writ.cli_lint.run`` (docs/lint.md). Defined in :mod:`writ.cli.commands.lint`."""

from writ.cli.commands.lint import LintRun as LintRun
from writ.cli.commands.lint import fetch_principals as fetch_principals
from writ.cli.commands.lint import lint_command as lint_command
from writ.cli.commands.lint import run as run

__all__ = ["LintRun", "fetch_principals", "lint_command", "run"]

if __name__ == "__main__":  # pragma: no cover
    lint_command()
