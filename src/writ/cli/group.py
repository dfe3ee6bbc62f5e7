"""The ``writ`` command line (``docs/cli.md``): a thin click layer over the client.

Commands talk to a server through :class:`writ.client.Client` (``--url``/``--token``, or
``WRIT_URL``/``WRIT_TOKEN``); ``--store URL`` on ``principal add`` and ``audit verify|export``
works on a store directly, offline, through the engine.

Exit codes: :data:`EXIT_STATUS` is the one table (docs/cli.md shows it, `writ --help` prints
it, and a test holds the three together).
"""

from __future__ import annotations

from typing import Any

import click

from writ._version import __version__
from writ.cli._helpers import (
    CONTEXT,
    EXIT_STATUS,
    Refused,
    _hint_context,
)
from writ.cli.commands.audit import audit
from writ.cli.commands.consent import change, consent
from writ.cli.commands.evidence import demo_command, postmortem_command
from writ.cli.commands.freeze import freeze, freezes, unfreeze
from writ.cli.commands.lease import acquire, fence, release, renew, revoke, status, who
from writ.cli.commands.lint import lint_command
from writ.cli.commands.policy import policy, wake_command
from writ.cli.commands.principal import principal
from writ.cli.commands.reach import gate_command, mcp_command
from writ.cli.commands.rollback import rollback
from writ.cli.commands.run import run
from writ.cli.commands.serve import serve
from writ.cli.commands.store import migrate
from writ.cli.commands.watch import watch
from writ.core.errors import WritError

__all__ = ["CONTEXT", "EXIT_STATUS", "WritGroup", "main"]


class WritGroup(click.Group):
    """The top group: every :class:`WritError` raised below it becomes :class:`Refused`.
    (Subcommands inherit ``CONTEXT`` from it.)"""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WritError as exc:
            raise Refused(exc, _hint_context(ctx, exc)) from exc


# ----------------------------------------------------------------------------- the group
@click.group(cls=WritGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="writ")
def main() -> None:
    """writ: which agent holds write authority on a resource right now, and who holds the
    key to undo it.

    Server URL and token come from --url/--token or WRIT_URL/WRIT_TOKEN.
    """


main.epilog = "\b\nExit status:\n" + "\n".join(
    f"  {code:>4}  {meaning.replace('`', '')}" for code, meaning in EXIT_STATUS.items()
)


# ----------------------------------------------------------------------------- the commands
# One module per command group (each imports its heavy dependencies lazily); the flat list below
# is the one place commands are added, in the order they always were.
main.add_command(serve)
main.add_command(policy)
main.add_command(principal)
main.add_command(acquire)
main.add_command(renew)
main.add_command(release)
main.add_command(revoke)
main.add_command(status)
main.add_command(who)
main.add_command(fence)
main.add_command(run)
main.add_command(audit)
main.add_command(change)
main.add_command(consent)
main.add_command(rollback)
main.add_command(freeze)
main.add_command(unfreeze)
main.add_command(freezes)
main.add_command(watch)
main.add_command(migrate)
main.add_command(lint_command)
main.add_command(gate_command)
main.add_command(mcp_command)
main.add_command(postmortem_command)
main.add_command(demo_command)
main.add_command(wake_command)


if __name__ == "__main__":  # pragma: no cover
    main()
