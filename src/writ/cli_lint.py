"""Moved to writ.cli.commands.lint (temporary alias for the rooms renovation; removed in WP6).

``python -m writ.cli_lint`` still runs ``writ lint`` alone (docs/lint.md).
"""

import importlib
import sys

if __name__ == "__main__":  # pragma: no cover
    importlib.import_module("writ.cli.commands.lint").lint_command()
else:
    sys.modules[__name__] = importlib.import_module("writ.cli.commands.lint")
