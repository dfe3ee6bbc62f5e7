"""``python -m writ.cli``: the ``writ`` command."""

from writ.cli.group import main

main()
