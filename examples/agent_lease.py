"""A Python agent that takes write authority with ``client.lease`` before it changes anything.

    python examples/agent_lease.py

perf-agent holds the resource for a block of work (renewed in the background, released at the
end); cost-agent, trying at the same time, is refused with perf-agent named as the holder,
and afterwards needs perf-agent's consent to undo its fresh change.
"""

from __future__ import annotations

from _setup import URL, register, resource

import writ

db = resource("db")
perf_name, perf_token = register("perf-agent")
cost_name, cost_token = register("cost-agent")

with writ.Client(URL, perf_token) as perf, writ.Client(URL, cost_token) as cost:
    with perf.lease(db, intent="double capacity", ttl_s=10, touches=["capacity"]) as lease:
        print(
            f"{perf_name} holds {db}: lease {lease.lease_id}, fencing token "
            f"{lease.fencing_token}, until {lease.expires_at}"
        )

        try:
            cost.acquire(db, intent="consolidate instances")
        except writ.Held as refused:
            print(
                f"{cost_name} refused: {refused.holder['holder']} holds it until "
                f"{refused.holder['expires_at']}"
            )

        # ... the real change goes here, sending lease.headers() through `writ gate` ...
        change = perf.change(lease.lease_id, "capacity", "capacity 4 -> 8", before=4, after=8)
        print(f"recorded change {change['change_id']}, protected until {change['protected_until']}")

        lease.check()  # raises writ.LeaseLost if a human revoked it meanwhile
    print(f"released; who holds {db} now: {perf.who(db)['lock_holder']}")

    try:  # undoing perf-agent's fresh change needs its consent first
        cost.acquire(db, intent="consolidate instances", touches=["capacity"])
    except writ.ConsentRequired as refused:
        print(
            f"{cost_name} must ask {refused.author} first (protected until "
            f"{refused.protected_until})"
        )
