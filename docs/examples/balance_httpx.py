"""Client-side load balancing over several HTTP upstreams with httpx."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from scalekit.balance import Balancer, RoundRobin

UPSTREAMS = ["http://api-1.internal", "http://api-2.internal", "http://api-3.internal"]


def upstream(request: httpx.Request) -> httpx.Response:
    """Stand-in for three real servers: api-2 is failing."""
    if request.url.host == "api-2.internal":
        return httpx.Response(503)
    return httpx.Response(200, json={"served_by": request.url.host})


async def get(client: httpx.AsyncClient, balancer: Balancer[str], path: str) -> dict:
    """One request through the balancer; a 5xx counts as a failure of that upstream."""
    tried: set[str] = set()
    while True:
        # never retry on an upstream this request already tried; raises when none is left
        with balancer.lease(accept=lambda url: url not in tried) as lease:
            response = await client.get(f"{lease.endpoint}{path}")
            if response.status_code < 500:
                return dict(response.json())
            lease.release(success=False)
            tried.add(lease.endpoint)


async def main() -> None:
    # RoundRobin keeps this example deterministic; PowerOfTwoChoices (peak EWMA latency) and
    # LeastOutstanding take the same arguments and are drop-in replacements.
    balancer = RoundRobin(
        UPSTREAMS,
        failure_threshold=3,  # 3 consecutive failures eject an upstream...
        ejection_time=30.0,  # ...for 30 s, then 60 s, 90 s... if it keeps failing
        slow_start=10.0,  # a returning upstream ramps up over 10 s
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as client:
        served = Counter([(await get(client, balancer, "/items"))["served_by"] for _ in range(100)])

    assert sum(served.values()) == 100  # every call succeeded
    assert "api-2.internal" not in served  # the failing upstream served nothing
    states = {s.endpoint: s.state for s in balancer.snapshot()}
    assert states["http://api-2.internal"] == "ejected"
    print(served, states)


if __name__ == "__main__":
    asyncio.run(main())
