"""The ``writ`` command line (``docs/cli.md``): the click group in :mod:`writ.cli.group`, shared
helpers in :mod:`writ.cli._helpers`, and one module per command group in :mod:`writ.cli.commands`.
"""

from writ.cli._helpers import EXIT_LEASE_LOST as EXIT_LEASE_LOST
from writ.cli._helpers import EXIT_NO_ANSWER as EXIT_NO_ANSWER
from writ.cli._helpers import EXIT_NOT_FOUND as EXIT_NOT_FOUND
from writ.cli._helpers import EXIT_REFUSED as EXIT_REFUSED
from writ.cli._helpers import EXIT_STATUS as EXIT_STATUS
from writ.cli._helpers import EXIT_USAGE as EXIT_USAGE
from writ.cli.commands.watch import _row_line as _row_line
from writ.cli.group import main as main

__all__ = [
    "EXIT_LEASE_LOST",
    "EXIT_NOT_FOUND",
    "EXIT_NO_ANSWER",
    "EXIT_REFUSED",
    "EXIT_STATUS",
    "EXIT_USAGE",
    "_row_line",
    "main",
]
