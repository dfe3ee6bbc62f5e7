"""The rooms renovation's move table (issue 17): every module of src/writ that moves, and where to.

Read by ``scripts/rooms_codemod.py``. Each row is ``(wp, old_module, new_module, names)``:

- ``names is None``: the whole module moved (``writ.consent`` -> ``writ.rules.consent``); a submodule
  path under ``old`` moves with it (longest prefix wins);
- ``names`` given: a symbol row for a split module: only those names moved to ``new``. Symbol rows are
  tried before module rows.

``wp`` is the work package that performs the move ("0" … "5"). Run the codemod with ``--wp`` naming the
packages whose moves exist in the tree. The codemod refuses a table where a row's destination would
itself be rewritten again (a module row whose ``new`` sits under its ``old``), so re-running it is a
no-op. WPs may refine their own rows (for instance the exact names of a symbol row) as they land.
"""

from __future__ import annotations

Row = tuple[str, str, str, tuple[str, ...] | None]

MOVES: list[Row] = [
    # ---------------------------------------------------------------- WP0: core, telemetry, net
    ("0", "writ", "writ._version", ("__version__",)),
    ("0", "writ.policy", "writ.core.errors", ("PolicyError",)),
    ("0", "writ.errors", "writ.core.errors", None),
    ("0", "writ.models", "writ.core.models", None),
    ("0", "writ.clock", "writ.core.clock", None),
    ("0", "writ.validate", "writ.core.validate", None),
    ("0", "writ.resources", "writ.core.resources", None),
    ("0", "writ.routes", "writ.core.routes", None),
    ("0", "writ.dashboards", "writ.core.dashboards", None),
    ("0", "writ.ledger", "writ.core.ledger", None),
    ("0", "writ.policy", "writ.core.policy", None),
    ("0", "writ.textsafe", "writ.core.textsafe", None),
    ("0", "writ.identity", "writ.core.identity", None),
    ("0", "writ.limits", "writ.net.limits", None),
    ("0", "writ.metrics", "writ.telemetry.metrics", None),
    ("0", "writ.logs", "writ.telemetry.logs", None),
    ("0", "writ.observe", "writ.telemetry.observe", None),
    ("0", "writ.tracing", "writ.telemetry.tracing", None),
    ("0", "writ.migrate", "writ.stores.migrate", None),
    # ---------------------------------------------------------------- WP1: engine/, rules/, grants
    # writ.engine becomes a package that re-exports Engine, Request, SYSTEM, ...: only symbol rows.
    (
        "1",
        "writ.engine",
        "writ.engine.hooks",
        ("SYSTEM", "MAX_WAIT_S", "MAX_TTL_S", "Request", "lock_row"),
    ),
    ("1", "writ.principals", "writ.engine.principals", None),
    ("1", "writ.fencing", "writ.engine.fencing", None),
    ("1", "writ.wake", "writ.engine.wake", None),
    ("1", "writ.paging", "writ.engine.wake_payloads", None),  # operate's wake/page payloads
    ("1", "writ.consent", "writ.rules.consent", None),
    ("1", "writ.freezes", "writ.rules.freezes", None),
    ("1", "writ.rollbacks", "writ.rules.rollbacks", None),
    ("1", "writ.stuck", "writ.rules.stuck", None),
    (
        "1",
        "writ.authority",
        "writ.core.grants",
        (
            "MODES",
            "GRANT_KEYS",
            "SECTION_KEYS",
            "READ_ALL",
            "Grant",
            "Settings",
            "OPEN",
            "Decision",
            "decide",
            "observable",
            "grant_lines",
            "section_line",
            "parse_section",
            "review",
        ),
    ),
    ("1", "writ.authority", "writ.rules.authority", None),
    # ---------------------------------------------------------------- WP2: api/
    ("2", "writ.server", "writ.api.middleware", ("MAX_BODY", "MAX_HEADERS", "_INTERNAL_ERROR")),
    ("2", "writ.server", "writ.api.serve", ("run",)),
    ("2", "writ.server", "writ.api.fast", ("WritApp",)),
    ("2", "writ.server", "writ.api.deps", ("principal", "Me")),
    ("2", "writ.server", "writ.api.app", None),  # create_app, EXTENSIONS
    ("2", "writ.authority_api", "writ.api.routers.authority", None),
    ("2", "writ.principal_routes", "writ.api.routers.principals", None),
    ("2", "writ.ops", "writ.api.ops", None),
    ("2", "writ.lifecycle", "writ.api.lifecycle", None),
    ("2", "writ.audit_pages", "writ.api.streaming", None),  # trust-defense's paged audit reads
    ("2", "writ.url_text", "writ.api.url_text", None),
    ("2", "writ.workers", "writ.api.workers", None),  # scaleout's worker processes
    # ---------------------------------------------------------------- WP3: cli/
    # writ.cli becomes a package re-exporting main and the EXIT_* codes.
    ("3", "writ.cli", "writ.cli.commands.watch", ("_row_line",)),
    ("3", "writ.cli_options", "writ.cli.options", None),
    ("3", "writ.cli_table", "writ.cli.table", None),
    ("3", "writ.cli_wait", "writ.cli.wait", None),
    ("3", "writ.spawn", "writ.cli.spawn", None),
    ("3", "writ.preflight", "writ.cli.preflight", None),
    ("3", "writ.cli_evidence", "writ.cli.commands.serve", ("install_checkpointer",)),
    ("3", "writ.cli_evidence", "writ.cli.commands.evidence", None),
    ("3", "writ.cli_lint", "writ.cli.commands.lint", None),
    ("3", "writ.cli_reach", "writ.cli.commands.reach", None),
    ("3", "writ.cli_authority", "writ.cli.commands.policy", None),
    ("3", "writ.cli_principals", "writ.cli.commands.principal", None),
    # ---------------------------------------------------------------- WP4: evidence/, store splits
    ("4", "writ.history", "writ.evidence.history", None),
    ("4", "writ.checkpoint", "writ.evidence.checkpoint", None),
    ("4", "writ.lint", "writ.evidence.lint", None),
    ("4", "writ.postmortem_chart", "writ.evidence.postmortem.chart", None),
    ("4", "writ.postmortem_html", "writ.evidence.postmortem", None),  # re-exported by the package
    ("4", "writ.postmortem", "writ.evidence.postmortem", None),
    # stores.sqlite / stores.postgres become same-name packages: no rows.
    # ---------------------------------------------------------------- WP5: client/, mcp/, gate/
    # writ.client and writ.gate become same-name packages that re-export: no rows.
    ("5", "writ.mcp_server", "writ.mcp", None),
]
