"""The Python client for writ's HTTP protocol (``docs/client.md``), sync and async.

::

    import writ

    client = writ.Client()                      # WRIT_URL / WRIT_TOKEN, else 127.0.0.1:7411
    with client.lease("prod/db", intent="double capacity", ttl_s=30, wait_s=10) as lease:
        lease.check()                           # raises writ.LeaseLost once the lease is gone
        httpx.post(admin_url, headers=lease.headers())

Every protocol route is one method returning the JSON body as a dict. A refusal raises the
typed error of :mod:`writ.errors` (``Held``, ``LeaseLost``, ``Forbidden``, ...); a server that
cannot be reached raises :class:`writ.errors.Unavailable`. :class:`Client` and
:class:`AsyncClient` share one definition of the routes (:class:`_Routes`): the sync client
returns dicts, the async one awaitables of dicts.
"""

from writ.client._async import AsyncClient as AsyncClient
from writ.client._base import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from writ.client._base import DEFAULT_URL as DEFAULT_URL
from writ.client._base import WATCH_WAIT_S as WATCH_WAIT_S
from writ.client._leases import AsyncLease as AsyncLease
from writ.client._leases import Lease as Lease
from writ.client._sync import Client as Client

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "WATCH_WAIT_S",
    "AsyncClient",
    "AsyncLease",
    "Client",
    "Lease",
]

for _cls in (Client, AsyncClient, Lease, AsyncLease):
    _cls.__module__ = __name__  # reprs and docs name writ.client, as before the split
del _cls
