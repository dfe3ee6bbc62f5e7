"""Postmortems: gather the audit rows of an incident, build the report, and render it as Markdown, JSON or HTML with a timeline chart."""
