"""Client-side load balancing over any set of endpoints (replicas, HTTP upstreams).

Three policies share one engine (marked down/up, outlier ejection with growing ejection time,
panic mode, slow start, an injectable clock)::

    from scalekit.balance import PowerOfTwoChoices

    balancer = PowerOfTwoChoices(["http://a:8000", "http://b:8000", "http://c:8000"])
    with balancer.lease() as lease:
        response = await client.get(f"{lease.endpoint}/items")

Nothing here imports a driver; choosing is synchronous and costs a few microseconds.
"""

from __future__ import annotations

from scalekit.balance._base import Balancer, EndpointSnapshot, EndpointState, Lease
from scalekit.balance.policies import LeastOutstanding, PowerOfTwoChoices, RoundRobin

__all__ = [
    "Balancer",
    "EndpointSnapshot",
    "EndpointState",
    "LeastOutstanding",
    "Lease",
    "PowerOfTwoChoices",
    "RoundRobin",
]
