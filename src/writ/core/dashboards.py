"""Pages of well-known dashboard and console products: never a rollback route.

A rollback route must name the call that undoes a change. A link to a Grafana dashboard,
a Kibana app or a cloud console names a page a person looks at — even when the word
"dashboard" is nowhere in it (``https://grafana.example.com/d/aB3xQ/db-latency``). The
one detector here, :func:`dashboard_page`, is what :func:`writ.core.routes.route_problem` asks, so
the same rule refuses a rollback plan at acquire and rejects a row in ``writ lint``. It judges
every way the route may be read (``routes._readings``): the host as httpx connects to it (no
trailing dot, no user or port, IDNA) and the path as a server reads it (percent-decoded,
dot segments resolved, ...) — ``https://app.datadoghq.com./apm`` and ``/%64/uid`` are pages too.
A query is judged as given; decoded, only for the Prometheus UI's ``expr=`` (its other
encoded words and slashes are the call's arguments: ``?target=svc%2Fd%2Fapi`` is no page).

Two kinds of evidence, either enough:

* the host: a product's UI host (``app.datadoghq.com``, ``one.newrelic.com``,
  ``console.aws.amazon.com``, ``portal.azure.com``, ``console.cloud.google.com``,
  ``<stack>.grafana.net``, ...). Their API hosts (``api.datadoghq.com``,
  ``api.newrelic.com``) are not pages and pass.
* the path: a product's page shapes, anchored on whole segments, wherever the product is
  hosted (``/d/<uid>`` and ``/d-solo/<uid>`` Grafana, ``/app/kibana`` and the other Kibana
  apps, ``/en-US/app/<app>`` Splunk Web, ``/dashboard(s)``, Tableau ``/views/``, Metabase
  ``/question/``, ...) — and any ``#`` fragment, which a browser keeps and never sends: a
  route with one names a page of a single-page app, not something writ can call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["dashboard_page"]

# (host suffix, product, API hosts under it that are calls, not pages)
_HOSTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("grafana.net", "Grafana Cloud", ()),
    ("datadoghq.com", "Datadog", ("api.", "http-intake.", "intake.", "trace.", "browser-intake")),
    ("datadoghq.eu", "Datadog", ("api.", "http-intake.", "intake.", "trace.", "browser-intake")),
    ("ddog-gov.com", "Datadog", ("api.", "http-intake.", "intake.", "trace.", "browser-intake")),
    ("newrelic.com", "New Relic", ("api.", "insights-api.", "insights-collector.", "log-api.")),
    ("splunkcloud.com", "Splunk Cloud", ("http-inputs-",)),
    ("cloud.es.io", "Elastic Cloud (Kibana)", ()),
    ("elastic-cloud.com", "Elastic Cloud (Kibana)", ()),
    ("cloud.elastic.co", "Elastic Cloud", ()),
    ("console.aws.amazon.com", "the AWS console", ()),
    ("signin.aws.amazon.com", "the AWS console", ()),
    ("console.amazonaws.cn", "the AWS console", ()),
    ("console.cloud.google.com", "the Google Cloud console", ()),
    ("console.firebase.google.com", "the Firebase console", ()),
    ("console.developers.google.com", "the Google Cloud console", ()),
    ("portal.azure.com", "the Azure portal", ()),
    ("portal.azure.us", "the Azure portal", ()),
    ("portal.azure.cn", "the Azure portal", ()),
    ("console.cloud.ibm.com", "the IBM Cloud console", ()),
    ("cloud.digitalocean.com", "the DigitalOcean control panel", ()),
    ("dash.cloudflare.com", "the Cloudflare dashboard", ()),
    ("dashboard.heroku.com", "the Heroku dashboard", ()),
    ("app.netlify.com", "the Netlify app", ()),
    ("honeycomb.io", "Honeycomb", ("api.",)),
    ("sentry.io", "Sentry", ()),
    ("lightstep.com", "Lightstep", ("api.", "ingest.")),
    ("signalfx.com", "Splunk Observability (SignalFx)", ("api.", "ingest.", "stream.")),
    ("logz.io", "Logz.io", ("api.", "listener.")),
    ("sumologic.com", "Sumo Logic", ("api.", "collectors.", "endpoint")),
    ("pagerduty.com", "PagerDuty", ("api.", "events.")),
    ("opsgenie.com", "Opsgenie", ("api.",)),
)

# page shapes, on whole path segments (case-insensitive), and what they are
_PATHS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.I), what)
    for pattern, what in (
        (r"(^|/)d(-solo)?/[^/?#]+", "a Grafana dashboard (/d/<uid>)"),
        (r"(^|/)(explore|alerting/list|playlists)(/|$|\?)", "a Grafana page"),
        (
            r"(^|/)app/(kibana|dashboards|discover|visualize|lens|canvas|maps|monitoring|apm|"
            r"observability|logs|metrics|uptime|security|management|dev_tools|ml|siem|infra)"
            r"(/|$|\?|#)",
            "a Kibana app (/app/...)",
        ),
        (r"^/[a-z]{2}-[a-z]{2}/(app|manager|account)/", "a Splunk Web page (/<locale>/app/...)"),
        (r"(^|/)dashboards?(/|$|\?|\.)", "a dashboard page"),
        (r"^/(dash|screen|notebook)/[^/?#]+", "a Datadog dashboard"),
        (r"^/(t/[^/?#]+/)?views/[^/?#]+/[^/?#]+", "a Tableau view"),
        (r"^/question/\d+", "a Metabase question"),
        (r"(^|/)superset/", "a Superset page"),
        (r"(^|/)(graph|alerts)\?g\d", "the Prometheus UI"),
    )
)
# the Prometheus UI with a query: "expr=" anywhere after its first graph? or alerts?. Found
# in two steps, since one pattern (".*expr=" after each of them) takes time in the square of
# the route's length (a route is an agent's input: 140 KB of "/graph?" held the event loop 8 s)
_PROMETHEUS = re.compile(r"(^|/)(graph|alerts)\?", re.I)


def dashboard_page(
    route: str, hosts: Iterable[str], paths: Iterable[str], queried: Iterable[str] = ()
) -> str | None:
    """What product page ``route`` (a path or an http(s) URL) is, or None when it looks like
    a call. Judged by its ``#`` fragment, by each host (lower case, no trailing dot) and by
    each path it may be read as (see the module docstring); and as the Prometheus UI also by
    each decoded path with its decoded ``?query`` (``queried``: a query's other words and
    slashes are the call's arguments, never a page's shape)."""
    if "#" in route:
        return "a page of a single-page app (a '#' fragment is never sent to a server)"
    for host in hosts:
        for suffix, product, apis in _HOSTS:
            if host == suffix or host.endswith("." + suffix):
                if not any(host.startswith(api) for api in apis):
                    return f"a page of {product} ({host})"
    paths = list(paths)
    for path in paths:
        for pattern, what in _PATHS:
            if pattern.search(path):
                return what
    for path in (*paths, *queried):
        ui = _PROMETHEUS.search(path)
        if ui is not None and "expr=" in path[ui.end() :].lower():
            return "the Prometheus UI"
    return None
